package ssmref

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/aws-sdk-go-v2/service/ssm/types"

	"github.com/iot-gateway/iot-gateway/app/internal/testsvc"
)

func newClient(t *testing.T) *ssm.Client { return testsvc.StartSSM(t).Client }

func TestResolve(t *testing.T) {
	ctx := context.Background()
	client := newClient(t)
	for name, v := range map[string]string{"/iot-gateway/dev/influx-token": "tok-123", "/iot-gateway/dev/mqtt-password": "pw"} {
		if _, err := client.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String(name), Value: aws.String(v),
			Type: types.ParameterTypeSecureString}); err != nil {
			t.Fatal(err)
		}
	}
	token, password, plain := "ssm:/iot-gateway/dev/influx-token", "ssm:/iot-gateway/dev/mqtt-password", "not-a-ref"
	r := New(client)
	err := r.Resolve(ctx, []Field{{"influx.token", &token}, {"mqtt.password", &password}, {"mqtt.username", &plain}})
	if err != nil {
		t.Fatal(err)
	}
	if token != "tok-123" || password != "pw" || plain != "not-a-ref" {
		t.Fatalf("resolved %q %q %q", token, password, plain)
	}

	missing, relative := "ssm:/iot-gateway/dev/nope", "ssm:nope"
	err = r.Resolve(ctx, []Field{{"influx.token", &missing}, {"mqtt.password", &relative}})
	if err == nil || !strings.Contains(err.Error(), "influx.token: ssm parameter /iot-gateway/dev/nope") ||
		!strings.Contains(err.Error(), "mqtt.password") {
		t.Fatalf("err = %v", err)
	}
	if missing != "ssm:/iot-gateway/dev/nope" {
		t.Fatalf("a failed reference must stay as it was, got %q", missing)
	}
}

func TestNoReferencesNoCalls(t *testing.T) {
	v := "plain"
	r := New(nil) // a nil client would panic if called
	if err := r.Resolve(context.Background(), []Field{{"k", &v}}); err != nil || Any([]Field{{"k", &v}}) {
		t.Fatal(err)
	}
}
