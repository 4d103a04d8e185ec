package stack

import (
	"net/netip"
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
