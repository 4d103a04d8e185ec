package stack

import (
	"net/netip"
	"regexp"
)

// IoT Core limits that size the scale topology
// (https://docs.aws.amazon.com/general/latest/gr/iot-core.html).
const (
	// IoTMessagesPerConnection is IoT Core's outbound publish rate per
	// connection (messages per second): a subscriber connection receives
	// no more than this.
	IoTMessagesPerConnection = 100
	// IoTUnacked is how many QoS 1 messages IoT Core sends a connection
	// before it waits for a PUBACK; the gateway acks after its spool
	// append, so this bounds only the time per round trip.
	IoTUnacked = 100
	// MaxSlotConnections is the gateway's own limit (mqtt.connections).
	MaxSlotConnections = 64
	// MaxGateways bounds the slots a stack declares.
	MaxGateways = 32
)

// IoTConnections is the number of IoT Core connections the gateways need
// for the configured peak rate, and how many each slot opens so that the
// peak is still carried while one slot is down (a rollout, a replacement).
func IoTConnections(c Config) (total, perSlot int) {
	total = (c.PeakMessagesPerSecond + IoTMessagesPerConnection - 1) / IoTMessagesPerConnection
	if total < 1 {
		total = 1
	}
	up := c.Gateways - 1
	if up < 1 {
		up = 1
	}
	perSlot = (total + up - 1) / up
	return total, perSlot
}

var (
	timestreamType = regexp.MustCompile(`^db\.influx\.(medium|large|xlarge|2xlarge|4xlarge|8xlarge|12xlarge|16xlarge)$`)
	shareGroupRe   = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)
)

// validateScale checks the topology keys and the combinations: the scale
// topology is gateways > 0 with broker iot-core and database timestream,
// and the all-in-one host's own keys do not apply to it.
func (c Config) validateScale(bad func(key, format string, a ...any)) {
	switch c.Broker {
	case BrokerLocal, BrokerIoTCore:
	default:
		bad("broker", "%q is not %s or %s", c.Broker, BrokerLocal, BrokerIoTCore)
	}
	switch c.Database {
	case DatabaseLocal, DatabaseTimestream:
	default:
		bad("database", "%q is not %s or %s", c.Database, DatabaseLocal, DatabaseTimestream)
	}
	if c.Gateways < 0 || c.Gateways > MaxGateways {
		bad("gateways", "%d is outside 0..%d", c.Gateways, MaxGateways)
		return
	}
	if !c.Scale() {
		if c.Broker == BrokerIoTCore {
			bad("broker", "iot-core needs gateways >= 1: gateway slots are what subscribe to IoT Core, and the all-in-one host runs its own broker")
		}
		if c.Database == DatabaseTimestream {
			bad("database", "timestream needs gateways >= 1: Timestream for InfluxDB is reachable only from the scale topology's private subnets, which the all-in-one host is not in")
		}
		return
	}
	if c.Broker != BrokerIoTCore {
		bad("gateways", "%d gateway slots need broker: iot-core: a slot runs no broker of its own", c.Gateways)
	}
	if c.Database != DatabaseTimestream {
		bad("gateways", "%d gateway slots need database: timestream: a slot runs no InfluxDB of its own", c.Gateways)
	}
	allInOneOnly := []struct {
		key string
		set bool
	}{
		{"mqttCidrs", len(c.MQTTCidrs) > 0}, {"mqttPlaintext", c.MQTTPlaintext}, {"adminCidrs", len(c.AdminCidrs) > 0},
		{"sshCidrs", len(c.SSHCidrs) > 0}, {"sshPublicKey", c.SSHPublicKey != ""}, {"elasticIp", c.ElasticIP},
		{"vpcId", c.VpcID != ""}, {"subnetId", c.SubnetID != ""},
	}
	for _, k := range allInOneOnly {
		if k.set {
			bad(k.key, "is for the all-in-one host; with gateways > 0 devices connect to IoT Core and the slots sit in the stack's own private subnets with no public IP and no inbound port")
		}
	}
	if c.AvailabilityZones < 1 || c.AvailabilityZones > 6 {
		bad("availabilityZones", "%d is outside 1..6", c.AvailabilityZones)
	}
	if c.TimestreamMultiAZ && c.AvailabilityZones < 2 {
		bad("timestreamMultiAz", "needs availabilityZones >= 2: the standby runs in another availability zone")
	}
	if p, err := netip.ParsePrefix(c.VpcCidr); err != nil || !p.Addr().Is4() || p != p.Masked() {
		bad("vpcCidr", "%q is not an IPv4 network like 10.42.0.0/16", c.VpcCidr)
	} else if !p.Addr().IsPrivate() {
		bad("vpcCidr", "%s is not a private (RFC 1918) range", c.VpcCidr)
	} else if p.Bits() < 16 || p.Bits() > 22 {
		bad("vpcCidr", "%s: the prefix must be /16 to /22 (VPCs are at most /16; each AZ gets a sixteenth)", c.VpcCidr)
	}
	if !timestreamType.MatchString(c.TimestreamInstanceType) {
		bad("timestreamInstanceType", "%q is not a Timestream for InfluxDB type like db.influx.medium", c.TimestreamInstanceType)
	}
	if c.TimestreamStorage < 20 || c.TimestreamStorage > 16384 {
		bad("timestreamStorage", "%d GiB is outside Timestream for InfluxDB's 20..16384", c.TimestreamStorage)
	}
	if !shareGroupRe.MatchString(c.SharedGroup) {
		bad("sharedGroup", "%q must be 1-64 letters, digits, _ or -", c.SharedGroup)
	}
	if c.PeakMessagesPerSecond < 1 {
		bad("peakMessagesPerSecond", "%d must be at least 1", c.PeakMessagesPerSecond)
	} else if total, per := IoTConnections(c); per > MaxSlotConnections {
		need := (total+MaxSlotConnections-1)/MaxSlotConnections + 1
		bad("peakMessagesPerSecond", "%d msg/s needs %d IoT Core connections (%d msg/s each), %d per slot with one slot down; a slot opens at most %d: set gateways to at least %d",
			c.PeakMessagesPerSecond, total, IoTMessagesPerConnection, per, MaxSlotConnections, need)
	}
	if c.InfluxRetentionDays != 0 {
		bad("influxRetentionDays", "%d: Timestream for InfluxDB creates the bucket itself, and the stack does not change its retention; leave it 0 and set the bucket's retention in InfluxDB", c.InfluxRetentionDays)
	}
	if c.InfluxVersion != "" {
		bad("influxVersion", "%q: Timestream for InfluxDB runs its own InfluxDB 2 version", c.InfluxVersion)
	}
	if c.MQTTQoS == 2 {
		bad("mqttQos", "2: IoT Core supports QoS 0 and 1 only; use 1 (the gateway still loses nothing: it acks after its spool append)")
	}
	if c.RolloutWaitSeconds < 60 {
		bad("rolloutWaitSeconds", "%d: the slots roll one at a time only if pulumi up waits for each (at least 60)", c.RolloutWaitSeconds)
	}
	for _, t := range c.MQTTTopics {
		if len(t) > 0 && t[0] == '$' {
			bad("mqttTopics", "%q: give the filter without $share/; the slots subscribe to $share/<sharedGroup>/<filter>", t)
		}
	}
}
