// Command iotgw-sign signs gateway artifacts for the host's check (see
// package provision/signing for the format). scripts/build.sh runs it.
//
//	iotgw-sign -genkey KEY                  write a new private key to KEY unless it exists
//	iotgw-sign -key KEY -pub PUB FILE...    write FILE.sig for each FILE and the public key to PUB
//
// Without -key the private key's PEM text is read from $IOTGW_SIGNING_KEY,
// which is how CI passes a secret without writing it to disk.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"

	"github.com/iot-gateway/iot-gateway/provision/signing"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "iotgw-sign:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fl := flag.NewFlagSet("iotgw-sign", flag.ContinueOnError)
	genkey := fl.String("genkey", "", "create a private key in this file unless it exists")
	keyFile := fl.String("key", "", "private key (PKCS #8 PEM); default: the PEM text in $IOTGW_SIGNING_KEY")
	pubFile := fl.String("pub", "", "write the public key (PEM) here")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if *genkey != "" {
		if _, err := os.Stat(*genkey); err == nil {
			return nil
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		k, err := signing.GenerateKey()
		if err != nil {
			return err
		}
		return os.WriteFile(*genkey, k, 0o600)
	}
	var pemText []byte
	if *keyFile != "" {
		b, err := os.ReadFile(*keyFile)
		if err != nil {
			return err
		}
		pemText = b
	} else if v := os.Getenv("IOTGW_SIGNING_KEY"); v != "" {
		pemText = []byte(v)
	} else {
		return errors.New("no key: pass -key FILE or set IOTGW_SIGNING_KEY")
	}
	priv, err := signing.ParsePrivateKey(pemText)
	if err != nil {
		return err
	}
	if *pubFile != "" {
		pub, err := signing.PublicKeyPEM(priv)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*pubFile, pub, 0o644); err != nil {
			return err
		}
	}
	for _, f := range fl.Args() {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if err := os.WriteFile(f+".sig", signing.Sign(priv, data), 0o644); err != nil {
			return err
		}
	}
	return nil
}
