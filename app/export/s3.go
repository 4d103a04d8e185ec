package export

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	tmtypes "github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// Store uploads exports to s3://Bucket/Prefix/<window path>/.
type Store struct {
	s3        *s3.Client
	tm        *transfermanager.Client
	bucket    string
	prefix    string
	threshold int64
}

// NewStore builds the S3 client from the AWS default chain (environment,
// shared config, instance role) and the export options, and checks that
// credentials can be found, so a host without them fails before it
// queries anything.
func NewStore(ctx context.Context, c Config) (*Store, error) {
	var opts []func(*awsconfig.LoadOptions) error
	if c.Region != "" {
		opts = append(opts, awsconfig.WithRegion(c.Region))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		if c.S3Endpoint == "" {
			return nil, errors.New("no AWS region: set AWS_REGION or export.region")
		}
		cfg.Region = "us-east-1" // S3-compatible servers ignore it, but requests are signed with one
	}
	if cfg.Credentials == nil {
		return nil, errors.New("no AWS credentials found (environment, shared config or instance role)")
	}
	if _, err := cfg.Credentials.Retrieve(ctx); err != nil {
		return nil, fmt.Errorf("no AWS credentials found (environment, shared config or instance role): %w", err)
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if c.S3Endpoint != "" {
			o.BaseEndpoint = aws.String(c.S3Endpoint)
			o.UsePathStyle = true
		}
	})
	tm := transfermanager.New(client, func(o *transfermanager.Options) {
		o.PartSizeBytes = c.PartSize
		o.MultipartUploadThreshold = c.MultipartThreshold
		o.ChecksumAlgorithm = tmtypes.ChecksumAlgorithmSha256
		o.Concurrency = 2
	})
	return &Store{s3: client, tm: tm, bucket: c.Bucket, prefix: c.Prefix, threshold: c.MultipartThreshold}, nil
}

// Check fails when the bucket does not exist or cannot be reached.
func (s *Store) Check(ctx context.Context) error {
	_, err := s.s3.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)})
	if err != nil {
		return fmt.Errorf("S3 bucket %q: %w", s.bucket, describeS3(err))
	}
	return nil
}

// dirKey is the key prefix, ending in a slash, of a window's objects.
func (s *Store) dirKey(w Window) string {
	if s.prefix == "" {
		return w.Path() + "/"
	}
	return s.prefix + "/" + w.Path() + "/"
}

// Location is the s3:// URL of a window's objects.
func (s *Store) Location(w Window) string { return "s3://" + s.bucket + "/" + s.dirKey(w) }

// Upload puts a committed local export (dir, described by m) in S3. The old
// manifest goes first and the new one last, so while an upload is under way
// or after it failed the window has no manifest and does not look
// complete; objects of an earlier export that are not in m are deleted at
// the end. Other windows' objects are not touched.
func (s *Store) Upload(ctx context.Context, dir string, w Window, m *Manifest) error {
	base := s.dirKey(w)
	manifestKey := base + ManifestName
	if _, err := s.s3.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(manifestKey)}); err != nil {
		return fmt.Errorf("delete s3://%s/%s: %w", s.bucket, manifestKey, describeS3(err))
	}
	keep := map[string]bool{manifestKey: true}
	for _, f := range m.Files {
		key := base + f.Name
		keep[key] = true
		if err := s.put(ctx, filepath.Join(dir, f.Name), key, f); err != nil {
			return err
		}
	}
	mf, err := fileInfo(filepath.Join(dir, ManifestName))
	if err != nil {
		return err
	}
	if err := s.put(ctx, filepath.Join(dir, ManifestName), manifestKey, mf); err != nil {
		return err
	}
	p := s3.NewListObjectsV2Paginator(s.s3, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(base)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list s3://%s/%s: %w", s.bucket, base, describeS3(err))
		}
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)
			if keep[key] {
				continue
			}
			if _, err := s.s3.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: o.Key}); err != nil {
				return fmt.Errorf("delete stale s3://%s/%s: %w", s.bucket, key, describeS3(err))
			}
		}
	}
	return nil
}

// put uploads one file with SHA-256 checksums: S3 checks each request
// (the whole object for a single PUT, each part for multipart), and the
// hex digest of the whole file rides along as x-amz-meta-sha256 because a
// multipart object's own checksum is a checksum of the parts' checksums.
func (s *Store) put(ctx context.Context, local, key string, f File) error {
	fh, err := os.Open(local)
	if err != nil {
		return err
	}
	defer fh.Close()
	in := &transfermanager.UploadObjectInput{
		Bucket:            aws.String(s.bucket),
		Key:               aws.String(key),
		Body:              fh,
		ChecksumAlgorithm: tmtypes.ChecksumAlgorithmSha256,
		ContentType:       aws.String(contentType(key)),
		Metadata:          map[string]string{"sha256": f.SHA256},
	}
	if f.Size < s.threshold {
		sum, err := hex.DecodeString(f.SHA256)
		if err != nil {
			return fmt.Errorf("%s: bad sha256 %q", local, f.SHA256)
		}
		in.ChecksumSHA256 = aws.String(base64.StdEncoding.EncodeToString(sum))
	}
	if _, err := s.tm.UploadObject(ctx, in); err != nil {
		return fmt.Errorf("upload %s to s3://%s/%s: %w", local, s.bucket, key, describeS3(err))
	}
	return nil
}

func contentType(key string) string {
	if strings.HasSuffix(key, lpSuffix) {
		return "application/gzip"
	}
	if path.Ext(key) == ".json" {
		return "application/json"
	}
	return "application/octet-stream"
}

func fileInfo(p string) (File, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return File{}, err
	}
	return File{Name: filepath.Base(p), Size: int64(len(b)), SHA256: sha256Hex(b)}, nil
}

// describeS3 keeps the service's error code and message and drops the
// SDK's long operation wrapping where it can.
func describeS3(err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		if ae.ErrorMessage() == "" {
			return errors.New(ae.ErrorCode())
		}
		return fmt.Errorf("%s: %s", ae.ErrorCode(), ae.ErrorMessage())
	}
	return err
}
