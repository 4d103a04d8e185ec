package iotcore

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iot"
)

// There is no local server for the AWS IoT control plane. These tests run
// the real SDK client against an HTTP server answering with responses in
// the shapes of the AWS IoT API reference (REST-JSON, errors named by the
// X-Amzn-ErrorType header), and check each request the SDK built: method,
// path, query, headers, body and its SigV4 signature's service.

type call struct {
	Method, Path, Query, Principal string
	Body                           map[string]any
}

type recordedIoT struct {
	mu    sync.Mutex
	calls []call
	fail  string // "METHOD path" that answers with an error
}

const (
	certArn = "arn:aws:iot:eu-central-1:123456789012:cert/9f8e7d6c"
	certID  = "9f8e7d6c"
	keyPEM  = "-----BEGIN RSA PRIVATE KEY-----\nMIIEdevice\n-----END RSA PRIVATE KEY-----\n"
)

func (s *recordedIoT) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	c := call{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Principal: r.Header.Get("X-Amzn-Principal")}
	if len(b) > 0 {
		_ = json.Unmarshal(b, &c.Body)
	}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	fail := s.fail
	s.mu.Unlock()
	if !strings.Contains(r.Header.Get("Authorization"), "/eu-central-1/iot/aws4_request") {
		w.Header().Set("X-Amzn-ErrorType", "UnauthorizedException")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"message":"not signed for iot"}`)
		return
	}
	key := r.Method + " " + r.URL.Path
	if key == fail {
		w.Header().Set("X-Amzn-ErrorType", "ResourceNotFoundException")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"message":"The thing does not exist"}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case key == "POST /things/d1":
		_, _ = io.WriteString(w, `{"thingArn":"arn:aws:iot:eu-central-1:123456789012:thing/d1","thingId":"0a1b","thingName":"d1"}`)
	case key == "POST /keys-and-certificate":
		_ = json.NewEncoder(w).Encode(map[string]any{
			"certificateArn": certArn, "certificateId": certID,
			"certificatePem": "-----BEGIN CERTIFICATE-----\nMIIBdevice\n-----END CERTIFICATE-----\n",
			"keyPair":        map[string]string{"PublicKey": "-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n", "PrivateKey": keyPEM},
		})
	default:
		_, _ = io.WriteString(w, `{}`)
	}
}

func client(t *testing.T, s *recordedIoT) *iot.Client {
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return iot.New(iot.Options{
		Region:       "eu-central-1",
		BaseEndpoint: aws.String(srv.URL),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
		HTTPClient:   srv.Client(),
	})
}

var dev = Device{Name: "d1", Site: "s1", ThingType: "iot-gateway-dev-sensor", ThingGroup: "iot-gateway-dev-fleet", Policy: "iot-gateway-dev-device"}

func TestRegister(t *testing.T) {
	s := &recordedIoT{}
	r, err := Register(context.Background(), client(t, s), dev)
	if err != nil {
		t.Fatal(err)
	}
	if r.CertificateArn != certArn || r.PrivateKey != keyPEM || r.ThingArn != "arn:aws:iot:eu-central-1:123456789012:thing/d1" {
		t.Errorf("registered = %+v", r)
	}
	var got []string
	for _, c := range s.calls {
		got = append(got, c.Method+" "+c.Path)
	}
	want := []string{"POST /things/d1", "PUT /thing-groups/addThingToThingGroup", "POST /keys-and-certificate",
		"PUT /target-policies/iot-gateway-dev-device", "PUT /things/d1/principals"}
	if !slices.Equal(got, want) {
		t.Fatalf("calls:\n%v\nwant:\n%v", got, want)
	}
	c := s.calls
	if c[0].Body["thingTypeName"] != "iot-gateway-dev-sensor" ||
		c[0].Body["attributePayload"].(map[string]any)["attributes"].(map[string]any)["site"] != "s1" {
		t.Errorf("CreateThing body %v", c[0].Body)
	}
	if c[1].Body["thingGroupName"] != "iot-gateway-dev-fleet" || c[1].Body["thingName"] != "d1" {
		t.Errorf("AddThingToThingGroup body %v", c[1].Body)
	}
	if c[2].Query != "setAsActive=true" {
		t.Errorf("CreateKeysAndCertificate query %q", c[2].Query)
	}
	if c[3].Body["target"] != certArn {
		t.Errorf("AttachPolicy body %v", c[3].Body)
	}
	if c[4].Principal != certArn {
		t.Errorf("AttachThingPrincipal principal %q", c[4].Principal)
	}
}

// TestRegisterUndo: when the certificate cannot be attached to the thing,
// it is detached from the policy, deactivated and deleted.
func TestRegisterUndo(t *testing.T) {
	s := &recordedIoT{fail: "PUT /things/d1/principals"}
	_, err := Register(context.Background(), client(t, s), dev)
	if err == nil || !strings.Contains(err.Error(), "attach the certificate to d1") || !strings.Contains(err.Error(), "ResourceNotFoundException") {
		t.Fatalf("err = %v", err)
	}
	var got []string
	for _, c := range s.calls[5:] {
		got = append(got, c.Method+" "+c.Path+"?"+c.Query)
	}
	want := []string{"POST /target-policies/iot-gateway-dev-device?", "PUT /certificates/" + certID + "?newStatus=INACTIVE", "DELETE /certificates/" + certID + "?"}
	if !slices.Equal(got, want) {
		t.Errorf("undo calls %v, want %v", got, want)
	}
	// DetachPolicy's body names the certificate.
	if s.calls[5].Body["target"] != certArn {
		t.Errorf("detach body %v", s.calls[5].Body)
	}
}

func TestDeviceValidate(t *testing.T) {
	for _, bad := range []func(*Device){
		func(d *Device) { d.Name = "" },
		func(d *Device) { d.Name = "a/b" },
		func(d *Device) { d.Name = "d+" },
		func(d *Device) { d.Site = "s#" },
		func(d *Device) { d.Site = "s 1" },
		func(d *Device) { d.Policy = "" },
	} {
		d := dev
		bad(&d)
		if err := d.Validate(); err == nil {
			t.Errorf("%+v accepted", d)
		}
	}
	s := &recordedIoT{}
	d := dev
	d.Name = "x/../y"
	if _, err := Register(context.Background(), client(t, s), d); err == nil || len(s.calls) != 0 {
		t.Errorf("bad name sent: %v, %d calls", err, len(s.calls))
	}
}
