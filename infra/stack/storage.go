package stack

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/iot-gateway/iot-gateway/provision/signing"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/s3"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ssm"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// artifact is the gateway binary to upload.
type artifact struct {
	path      string
	sha256    string
	signature string // base64 of <path>.sig
}

// readArtifact reads the binary and its signature (<path>.sig, as
// scripts/build.sh writes it) and checks the signature with the stack's
// public key, so a binary the host would refuse is refused here first.
func readArtifact(path, publicKey string) (artifact, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return artifact{}, fmt.Errorf("artifactPath: %w (build it with scripts/build.sh)", err)
	}
	sig, err := os.ReadFile(path + ".sig")
	if err != nil {
		return artifact{}, fmt.Errorf("artifactPath: no signature: %w (scripts/build.sh signs the binaries)", err)
	}
	pub, err := signing.ParsePublicKey([]byte(publicKey))
	if err != nil {
		return artifact{}, fmt.Errorf("signingPublicKey: %w", err)
	}
	sum := sha256.Sum256(data)
	art := artifact{path: path, sha256: hex.EncodeToString(sum[:]), signature: base64.StdEncoding.EncodeToString(sig)}
	if err := signing.Verify(pub, data, sig); err != nil {
		return art, fmt.Errorf("artifactPath: %s.sig: %w (signingPublicKey); was it built with another signing key? %w", path, err, errBadSignature)
	}
	return art, nil
}

// errBadSignature marks a signature that does not verify with the stack's key.
var errBadSignature = errors.New("the host would refuse this binary")

// Storage is the stack's bucket (gateway artifacts and daily exports) and
// the uploaded gateway binary.
type Storage struct {
	pulumi.ResourceState

	Bucket         *s3.BucketV2
	Artifact       *s3.BucketObjectv2
	ArtifactKey    string
	ArtifactSHA256 string
	ArtifactURI    pulumi.StringOutput
	// ArtifactParam holds "s3://bucket/key sha256 signature"; the host
	// reads it to fetch the binary and checks the signature with the key
	// in its user-data, which this parameter cannot change.
	ArtifactParam *ssm.Parameter
}

// NewStorage declares the bucket with its settings and uploads the binary.
func NewStorage(ctx *pulumi.Context, name string, e env, c Config, art artifact, opts ...pulumi.ResourceOption) (*Storage, error) {
	s := &Storage{}
	if err := ctx.RegisterComponentResource("iot-gateway:infra:Storage", name, s, opts...); err != nil {
		return nil, err
	}
	parent := pulumi.Parent(s)
	bucket, err := s3.NewBucketV2(ctx, name+"-bucket", &s3.BucketV2Args{
		BucketPrefix: pulumi.String(fmt.Sprintf("%s-%s-", Project, e.stack)),
		ForceDestroy: pulumi.Bool(c.BucketForceDestroy),
		Tags:         e.tagged("bucket"),
	}, parent)
	if err != nil {
		return nil, err
	}
	s.Bucket = bucket
	_, err = s3.NewBucketOwnershipControls(ctx, name+"-ownership", &s3.BucketOwnershipControlsArgs{
		Bucket: bucket.ID(),
		Rule:   &s3.BucketOwnershipControlsRuleArgs{ObjectOwnership: pulumi.String("BucketOwnerEnforced")},
	}, parent)
	if err != nil {
		return nil, err
	}
	pab, err := s3.NewBucketPublicAccessBlock(ctx, name+"-public-access", &s3.BucketPublicAccessBlockArgs{
		Bucket:                bucket.ID(),
		BlockPublicAcls:       pulumi.Bool(true),
		BlockPublicPolicy:     pulumi.Bool(true),
		IgnorePublicAcls:      pulumi.Bool(true),
		RestrictPublicBuckets: pulumi.Bool(true),
	}, parent)
	if err != nil {
		return nil, err
	}
	_, err = s3.NewBucketVersioningV2(ctx, name+"-versioning", &s3.BucketVersioningV2Args{
		Bucket: bucket.ID(),
		VersioningConfiguration: &s3.BucketVersioningV2VersioningConfigurationArgs{
			Status: pulumi.String("Enabled"),
		},
	}, parent)
	if err != nil {
		return nil, err
	}
	_, err = s3.NewBucketServerSideEncryptionConfigurationV2(ctx, name+"-encryption", &s3.BucketServerSideEncryptionConfigurationV2Args{
		Bucket: bucket.ID(),
		Rules: s3.BucketServerSideEncryptionConfigurationV2RuleArray{
			&s3.BucketServerSideEncryptionConfigurationV2RuleArgs{
				ApplyServerSideEncryptionByDefault: &s3.BucketServerSideEncryptionConfigurationV2RuleApplyServerSideEncryptionByDefaultArgs{
					SseAlgorithm: pulumi.String("AES256"),
				},
				BucketKeyEnabled: pulumi.Bool(true),
			},
		},
	}, parent)
	if err != nil {
		return nil, err
	}
	_, err = s3.NewBucketPolicy(ctx, name+"-tls-only", &s3.BucketPolicyArgs{
		Bucket: bucket.ID(),
		Policy: bucket.Arn.ApplyT(func(arn string) (string, error) { return tlsOnlyPolicy(arn) }).(pulumi.StringOutput),
	}, parent, pulumi.DependsOn([]pulumi.Resource{pab}))
	if err != nil {
		return nil, err
	}
	_, err = s3.NewBucketLifecycleConfigurationV2(ctx, name+"-lifecycle", &s3.BucketLifecycleConfigurationV2Args{
		Bucket: bucket.ID(),
		Rules: s3.BucketLifecycleConfigurationV2RuleArray{
			&s3.BucketLifecycleConfigurationV2RuleArgs{
				Id:     pulumi.String("expire-exports"),
				Status: pulumi.String("Enabled"),
				Filter: &s3.BucketLifecycleConfigurationV2RuleFilterArgs{Prefix: pulumi.String(c.ExportPrefix)},
				Expiration: &s3.BucketLifecycleConfigurationV2RuleExpirationArgs{
					Days: pulumi.Int(c.ExportRetentionDays),
				},
			},
			&s3.BucketLifecycleConfigurationV2RuleArgs{
				Id:     pulumi.String("expire-old-versions"),
				Status: pulumi.String("Enabled"),
				Filter: &s3.BucketLifecycleConfigurationV2RuleFilterArgs{Prefix: pulumi.String("")},
				NoncurrentVersionExpiration: &s3.BucketLifecycleConfigurationV2RuleNoncurrentVersionExpirationArgs{
					NoncurrentDays: pulumi.Int(c.NoncurrentDays),
				},
				AbortIncompleteMultipartUpload: &s3.BucketLifecycleConfigurationV2RuleAbortIncompleteMultipartUploadArgs{
					DaysAfterInitiation: pulumi.Int(7),
				},
			},
		},
	}, parent)
	if err != nil {
		return nil, err
	}

	// Named by content: a new binary is a new object, and the old one stays
	// until the next update deletes it.
	s.ArtifactSHA256 = art.sha256
	s.ArtifactKey = fmt.Sprintf("artifacts/iotgw-linux-%s/%s", c.GoArch(), art.sha256)
	obj, err := s3.NewBucketObjectv2(ctx, name+"-artifact", &s3.BucketObjectv2Args{
		Bucket:               bucket.ID(),
		Key:                  pulumi.String(s.ArtifactKey),
		Source:               pulumi.NewFileAsset(art.path),
		ContentType:          pulumi.String("application/octet-stream"),
		ChecksumAlgorithm:    pulumi.String("SHA256"),
		ServerSideEncryption: pulumi.String("AES256"),
		Metadata:             pulumi.StringMap{"sha256": pulumi.String(art.sha256)},
		Tags:                 e.tagged("artifact"),
	}, parent)
	if err != nil {
		return nil, err
	}
	s.Artifact = obj
	s.ArtifactURI = pulumi.Sprintf("s3://%s/%s", bucket.Bucket, obj.Key)
	s.ArtifactParam, err = ssm.NewParameter(ctx, name+"-artifact-ref", &ssm.ParameterArgs{
		Name:        pulumi.String(e.paramPath() + "/artifact"),
		Description: pulumi.String("Gateway binary for the host: s3 URI, sha256, Ed25519 signature (base64)"),
		Type:        pulumi.String("String"),
		Value:       pulumi.Sprintf("%s %s %s", s.ArtifactURI, art.sha256, art.signature),
		Tags:        e.tagged("artifact-ref"),
	}, parent)
	if err != nil {
		return nil, err
	}
	err = ctx.RegisterResourceOutputs(s, pulumi.Map{
		"bucket":      bucket.Bucket,
		"artifactUri": s.ArtifactURI,
	})
	return s, err
}

// policyDoc is an IAM policy document.
type policyDoc struct {
	Version   string      `json:"Version"`
	Statement []statement `json:"Statement"`
}

type statement struct {
	Sid       string   `json:"Sid,omitempty"`
	Effect    string   `json:"Effect"`
	Principal any      `json:"Principal,omitempty"`
	Action    []string `json:"Action"`
	Resource  []string `json:"Resource,omitempty"`
	// NotResource: every resource but these (used with Deny only).
	NotResource []string       `json:"NotResource,omitempty"`
	Condition   map[string]any `json:"Condition,omitempty"`
}

func (p policyDoc) json() (string, error) {
	b, err := json.Marshal(p)
	return string(b), err
}

// tlsOnlyPolicy denies every request to the bucket that is not over TLS.
func tlsOnlyPolicy(bucketArn string) (string, error) {
	return policyDoc{
		Version: "2012-10-17",
		Statement: []statement{{
			Sid:       "DenyInsecureTransport",
			Effect:    "Deny",
			Principal: "*",
			Action:    []string{"s3:*"},
			Resource:  []string{bucketArn, bucketArn + "/*"},
			Condition: map[string]any{"Bool": map[string]string{"aws:SecureTransport": "false"}},
		}},
	}.json()
}
