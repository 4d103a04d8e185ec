package testsvc

import (
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/sivchari/kumo"
)

// SSM is an SSM-compatible server run in process (kumo): the real
// aws-sdk-go-v2 client talks to it over HTTP with signed requests.
type SSM struct {
	URL    string
	Client *ssm.Client
}

// SSMRegion and the static credentials below are what StartSSM's client
// signs with; kumo accepts any.
const (
	SSMRegion      = "eu-west-1"
	SSMAccessKeyID = "AKIDEXAMPLE"
	SSMSecretKey   = "secret"
)

// StartSSM starts the server, stopped when the test ends, and a client
// for it.
func StartSSM(t testing.TB) *SSM {
	t.Helper()
	srv := kumo.NewServer()
	t.Cleanup(srv.Close)
	return &SSM{URL: srv.URL, Client: ssm.New(ssm.Options{
		Region:       SSMRegion,
		BaseEndpoint: aws.String(srv.URL),
		Credentials:  credentials.NewStaticCredentialsProvider(SSMAccessKeyID, SSMSecretKey, ""),
	})}
}
