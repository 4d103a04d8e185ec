// Package iotcore registers devices with AWS IoT Core (aws-sdk-go-v2): a
// thing of the fleet's type, in its group, with the device's site as an
// attribute, and a new certificate with the device policy attached. The
// device policy (infra/stack) lets a device connect only as its thing name
// and use only its own sensors/<site>/<thing>/, commands/ and replies/
// topics, so the thing name and its site attribute are the device's
// identity.
package iotcore

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iot"
	"github.com/aws/aws-sdk-go-v2/service/iot/types"
)

// API is the part of *iot.Client that Register uses.
type API interface {
	CreateThing(context.Context, *iot.CreateThingInput, ...func(*iot.Options)) (*iot.CreateThingOutput, error)
	AddThingToThingGroup(context.Context, *iot.AddThingToThingGroupInput, ...func(*iot.Options)) (*iot.AddThingToThingGroupOutput, error)
	CreateKeysAndCertificate(context.Context, *iot.CreateKeysAndCertificateInput, ...func(*iot.Options)) (*iot.CreateKeysAndCertificateOutput, error)
	AttachPolicy(context.Context, *iot.AttachPolicyInput, ...func(*iot.Options)) (*iot.AttachPolicyOutput, error)
	AttachThingPrincipal(context.Context, *iot.AttachThingPrincipalInput, ...func(*iot.Options)) (*iot.AttachThingPrincipalOutput, error)
	DetachPolicy(context.Context, *iot.DetachPolicyInput, ...func(*iot.Options)) (*iot.DetachPolicyOutput, error)
	UpdateCertificate(context.Context, *iot.UpdateCertificateInput, ...func(*iot.Options)) (*iot.UpdateCertificateOutput, error)
	DeleteCertificate(context.Context, *iot.DeleteCertificateInput, ...func(*iot.Options)) (*iot.DeleteCertificateOutput, error)
}

// Device is what a device is registered as.
type Device struct {
	Name       string // thing name, the device's client id and its topic segment
	Site       string // the site attribute, its other topic segment
	ThingType  string
	ThingGroup string
	Policy     string // the device policy attached to its certificate
}

// Registered is the result: the thing and its credentials. PrivateKey is
// returned once by IoT Core and kept nowhere else.
type Registered struct {
	ThingArn       string
	CertificateArn string
	CertificateID  string
	CertificatePEM string
	PrivateKey     string
}

// name matches what may be a topic segment and a thing name: IoT Core
// allows more (":"), the project's topics do not.
var name = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// Validate names the first field that is missing or not usable.
func (d Device) Validate() error {
	for _, f := range []struct{ key, v string }{
		{"device name", d.Name}, {"site", d.Site}, {"thing type", d.ThingType}, {"thing group", d.ThingGroup}, {"policy", d.Policy},
	} {
		if !name.MatchString(f.v) {
			return fmt.Errorf("iotcore: %s %q must be 1-128 letters, digits, _ or -", f.key, f.v)
		}
	}
	return nil
}

// Register creates the thing, adds it to the group, makes an active
// certificate, attaches the policy to it and the certificate to the thing.
// If a step after the certificate fails, the certificate is deactivated and
// deleted, so no usable credential is left without its thing.
func Register(ctx context.Context, api API, d Device) (Registered, error) {
	if err := d.Validate(); err != nil {
		return Registered{}, err
	}
	thing, err := api.CreateThing(ctx, &iot.CreateThingInput{
		ThingName:        aws.String(d.Name),
		ThingTypeName:    aws.String(d.ThingType),
		AttributePayload: &types.AttributePayload{Attributes: map[string]string{"site": d.Site}},
	})
	if err != nil {
		return Registered{}, fmt.Errorf("iotcore: create thing %s: %w", d.Name, err)
	}
	if _, err := api.AddThingToThingGroup(ctx, &iot.AddThingToThingGroupInput{
		ThingName: aws.String(d.Name), ThingGroupName: aws.String(d.ThingGroup),
	}); err != nil {
		return Registered{}, fmt.Errorf("iotcore: add %s to thing group %s: %w", d.Name, d.ThingGroup, err)
	}
	cert, err := api.CreateKeysAndCertificate(ctx, &iot.CreateKeysAndCertificateInput{SetAsActive: true})
	if err != nil {
		return Registered{}, fmt.Errorf("iotcore: create certificate for %s: %w", d.Name, err)
	}
	if cert.CertificateArn == nil || cert.CertificateId == nil || cert.CertificatePem == nil || cert.KeyPair == nil || cert.KeyPair.PrivateKey == nil {
		return Registered{}, errors.New("iotcore: CreateKeysAndCertificate returned no certificate or key")
	}
	r := Registered{ThingArn: aws.ToString(thing.ThingArn), CertificateArn: *cert.CertificateArn, CertificateID: *cert.CertificateId,
		CertificatePEM: *cert.CertificatePem, PrivateKey: *cert.KeyPair.PrivateKey}
	attached := false
	undo := func(step error) (Registered, error) {
		// IoT Core deletes no certificate that still has a policy.
		var e0 error
		if attached {
			_, e0 = api.DetachPolicy(ctx, &iot.DetachPolicyInput{PolicyName: aws.String(d.Policy), Target: cert.CertificateArn})
		}
		_, e1 := api.UpdateCertificate(ctx, &iot.UpdateCertificateInput{CertificateId: cert.CertificateId, NewStatus: types.CertificateStatusInactive})
		_, e2 := api.DeleteCertificate(ctx, &iot.DeleteCertificateInput{CertificateId: cert.CertificateId})
		if err := errors.Join(e0, e1, e2); err != nil {
			return Registered{}, fmt.Errorf("%w; and the certificate %s could not be removed: %v", step, r.CertificateID, err)
		}
		return Registered{}, step
	}
	if _, err := api.AttachPolicy(ctx, &iot.AttachPolicyInput{PolicyName: aws.String(d.Policy), Target: cert.CertificateArn}); err != nil {
		return undo(fmt.Errorf("iotcore: attach policy %s: %w", d.Policy, err))
	}
	attached = true
	if _, err := api.AttachThingPrincipal(ctx, &iot.AttachThingPrincipalInput{ThingName: aws.String(d.Name), Principal: cert.CertificateArn}); err != nil {
		return undo(fmt.Errorf("iotcore: attach the certificate to %s: %w", d.Name, err))
	}
	return r, nil
}
