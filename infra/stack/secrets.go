package stack

import (
	"strings"

	"github.com/iot-gateway/iot-gateway/provision"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ssm"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Secrets are the stack's secrets as SSM SecureString parameters under the
// stack's path. The host reads them with its instance role; they never
// appear in user-data or in plain stack outputs.
type Secrets struct {
	pulumi.ResourceState

	Path         string // /iot-gateway/<stack>
	BrokerCAName string // written by the host on first boot, not a secret
	Parameters   map[string]*ssm.Parameter
}

// SecretParams maps each secret config key to its parameter name under
// the stack's path.
var SecretParams = []struct{ Key, Name, Description string }{
	{KeyInfluxAdminPassword, "influx-admin-password", "InfluxDB admin password"},
	{KeyInfluxToken, "influx-token", "InfluxDB operator API token (iotgw-setup only)"},
	{KeyMQTTPassword, "mqtt-password", "Gateway's password on the broker"},
}

// NewSecrets declares the SecureString parameters.
func NewSecrets(ctx *pulumi.Context, name string, e env, c Config, opts ...pulumi.ResourceOption) (*Secrets, error) {
	s := &Secrets{
		Path:         e.paramPath(),
		BrokerCAName: e.paramPath() + "/broker-ca",
		Parameters:   map[string]*ssm.Parameter{},
	}
	if err := ctx.RegisterComponentResource("iot-gateway:infra:Secrets", name, s, opts...); err != nil {
		return nil, err
	}
	values := map[string]string{
		KeyInfluxAdminPassword: c.InfluxAdminPassword,
		KeyInfluxToken:         c.InfluxToken,
		KeyMQTTPassword:        c.MQTTPassword,
	}
	for _, sp := range SecretParams {
		p, err := ssm.NewParameter(ctx, name+"-"+sp.Name, &ssm.ParameterArgs{
			Name:        pulumi.String(s.Path + "/" + sp.Name),
			Description: pulumi.String(sp.Description),
			Type:        pulumi.String("SecureString"),
			Value:       pulumi.ToSecret(pulumi.String(values[sp.Key])).(pulumi.StringOutput),
			Tags:        e.tagged(sp.Name),
		}, pulumi.Parent(s), pulumi.AdditionalSecretOutputs([]string{"value"}))
		if err != nil {
			return nil, err
		}
		s.Parameters[sp.Name] = p
	}
	// The gateway's and the export's own InfluxDB tokens: iotgw-setup makes
	// them with the operator token and overwrites these values.
	for _, n := range []string{"influx-run-token", "influx-export-token"} {
		p, err := ssm.NewParameter(ctx, name+"-"+n, &ssm.ParameterArgs{
			Name:        pulumi.String(s.Path + "/" + n),
			Description: pulumi.String("InfluxDB token of iotgw " + strings.TrimSuffix(strings.TrimPrefix(n, "influx-"), "-token") + ", written by the host"),
			Type:        pulumi.String("SecureString"),
			Value:       pulumi.ToSecret(pulumi.String(provision.TokenPlaceholder + " written by the host on first boot")).(pulumi.StringOutput),
			Tags:        e.tagged(n),
		}, pulumi.Parent(s), pulumi.IgnoreChanges([]string{"value"}), pulumi.AdditionalSecretOutputs([]string{"value"}))
		if err != nil {
			return nil, err
		}
		s.Parameters[n] = p
	}
	// The host overwrites the value with its CA certificate; declaring it
	// here means destroy removes it too.
	ca, err := ssm.NewParameter(ctx, name+"-broker-ca", &ssm.ParameterArgs{
		Name:        pulumi.String(s.BrokerCAName),
		Description: pulumi.String("Broker CA certificate (PEM), written by the host on first boot"),
		Type:        pulumi.String("String"),
		Tier:        pulumi.String("Standard"),
		Value:       pulumi.String("pending: written by the host on first boot"),
		Tags:        e.tagged("broker-ca"),
	}, pulumi.Parent(s), pulumi.IgnoreChanges([]string{"value"}))
	if err != nil {
		return nil, err
	}
	s.Parameters["broker-ca"] = ca
	err = ctx.RegisterResourceOutputs(s, pulumi.Map{"path": pulumi.String(s.Path)})
	return s, err
}
