package stack

import (
	"net/netip"
	"strings"
	"testing"
)

// FuzzValidateCidrs: whatever CIDRs the config holds, a configuration that
// validates never yields a rule opening 22 or 8086 to the whole internet.
func FuzzValidateCidrs(f *testing.F) {
	for _, s := range []string{"0.0.0.0/0", "::/0", "0::0/0", "::ffff:0.0.0.0/96", "10.0.0.0/8", "192.0.2.1/32", " 0.0.0.0/0", "0.0.0.0/00"} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, admin, ssh string) {
		c := Defaults()
		c.Owner = "team"
		c.InfluxAdminPassword, c.InfluxToken, c.MQTTPassword = testAdminPassword, testToken, testMQTTPassword
		c.SigningPublicKey = string(testSigner.pub)
		c.AdminCidrs, c.SSHCidrs = []string{admin}, []string{ssh}
		if c.Validate() != nil {
			return
		}
		rules, err := IngressRules(c)
		if err != nil {
			t.Fatalf("validated config rejected by IngressRules: %v", err)
		}
		for _, r := range rules {
			p := netip.MustParsePrefix(r.Cidr)
			if (r.Port == PortSSH || r.Port == PortInflux) && p.Bits() == 0 {
				t.Fatalf("port %d open to %s", r.Port, r.Cidr)
			}
		}
	})
}

// FuzzPlainMQTT: whatever mqttCidrs holds, plain MQTT (1883) is never
// opened to the whole internet: the config is refused (naming
// mqttPlaintext) or its rules open 1883 only to blocks of /8 (IPv6 /32) or
// narrower.
func FuzzPlainMQTT(f *testing.F) {
	for _, s := range []string{"0.0.0.0/0", "::/0", "0.0.0.0/1", "128.0.0.0/1", "::/1", "10.0.0.0/8", "2001:db8::/32", "203.0.113.0/24"} {
		f.Add(s, "192.0.2.0/24")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		c := Defaults()
		c.Owner = "team"
		c.InfluxAdminPassword, c.InfluxToken, c.MQTTPassword = testAdminPassword, testToken, testMQTTPassword
		c.SigningPublicKey = string(testSigner.pub)
		c.MQTTCidrs, c.MQTTPlaintext = []string{a, b}, true
		err := c.Validate()
		rules, rerr := IngressRules(c)
		if err != nil {
			if p, perr := netip.ParsePrefix(a); perr == nil && p == p.Masked() && tooBroad(p) && !strings.Contains(err.Error(), "mqttPlaintext: ") {
				t.Fatalf("%s refused without naming mqttPlaintext: %v", a, err)
			}
			return
		}
		if rerr != nil {
			t.Fatalf("validated config rejected by IngressRules: %v", rerr)
		}
		for _, r := range rules {
			if p := netip.MustParsePrefix(r.Cidr); r.Port == PortMQTTPlain && (p.Bits() == 0 || tooBroad(p)) {
				t.Fatalf("1883 open to %s", r.Cidr)
			}
		}
	})
}
