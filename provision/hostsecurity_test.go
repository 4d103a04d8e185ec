package provision

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/ssmref"
	"github.com/iot-gateway/iot-gateway/provision/signing"
)

// signer is a key pair made with provision/signing, as scripts/build.sh
// makes them.
type signer struct {
	key []byte // PKCS #8 PEM
	pub []byte // SubjectPublicKeyInfo PEM
}

var testSigner = func() signer {
	s, err := makeSigner()
	if err != nil {
		panic(err)
	}
	return s
}()

func makeSigner() (signer, error) {
	key, err := signing.GenerateKey()
	if err != nil {
		return signer{}, err
	}
	priv, err := signing.ParsePrivateKey(key)
	if err != nil {
		return signer{}, err
	}
	pub, err := signing.PublicKeyPEM(priv)
	return signer{key: key, pub: pub}, err
}

func newTestSigner(t *testing.T) signer {
	t.Helper()
	s, err := makeSigner()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sign returns the base64 signature of data, as the artifact parameter
// carries it.
func (s signer) sign(data []byte) string {
	priv, err := signing.ParsePrivateKey(s.key)
	if err != nil {
		panic(err)
	}
	return base64.StdEncoding.EncodeToString(signing.Sign(priv, data))
}

// stepEnv makes a temporary root holding the rendered payload and returns
// it with the environment that lets a test source the setup script and
// run one of its steps.
func stepEnv(t *testing.T, p Params) (root string, env []string) {
	t.Helper()
	root = t.TempDir()
	fl, err := Files(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fl {
		dst := filepath.Join(root, strings.TrimPrefix(f.Path, PayloadDir))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, []byte(f.Content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	script := filepath.Join(root, "iotgw-setup")
	if err := os.WriteFile(script, SetupScriptSource(), 0o755); err != nil {
		t.Fatal(err)
	}
	return root, append(os.Environ(), "ROOT="+root, "HOST_ENV="+filepath.Join(root, "etc/iotgw/host.env"), "SCRIPT="+script)
}

// runStep sources the setup script (which then only defines its steps) and
// runs shell in it.
func runStep(env []string, shell string, args ...string) (string, error) {
	cmd := exec.Command("bash", append([]string{"-c", `source "$SCRIPT"; ` + shell, "step"}, args...)...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestVerifySignatureStep runs the host's check (verify_signature in
// setup-host.sh, with the system's openssl) on signatures made by the Go
// signer scripts/build.sh uses, against the key the user-data installs.
func TestVerifySignatureStep(t *testing.T) {
	requireTool(t, "openssl", "openssl")
	root, env := stepEnv(t, baseParams())
	if got, _ := os.ReadFile(filepath.Join(root, SigningKeyFile)); !bytes.Equal(got, testSigner.pub) {
		t.Fatalf("%s is not the stack's public key:\n%s", SigningKeyFile, got)
	}
	artifact := filepath.Join(root, "artifact")
	data := bytes.Repeat([]byte("iotgw binary "), 100000)
	if err := os.WriteFile(artifact, data, 0o644); err != nil {
		t.Fatal(err)
	}
	good := testSigner.sign(data)
	if out, err := runStep(env, `verify_signature "$1" "$2"`, artifact, good); err != nil {
		t.Fatalf("good signature refused: %v\n%s", err, out)
	}
	tampered := bytes.Clone(data)
	tampered[len(tampered)/2] ^= 1
	for name, c := range map[string]struct {
		data []byte
		sig  string
	}{
		"tampered artifact":     {tampered, good},
		"signed by another key": {data, newTestSigner(t).sign(data)},
		"another key, tampered": {tampered, newTestSigner(t).sign(tampered)},
		"empty signature":       {data, ""},
		"short signature":       {data, base64.StdEncoding.EncodeToString([]byte("short"))},
		"not base64":            {data, "%%%" + good[3:]},
	} {
		if err := os.WriteFile(artifact, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := runStep(env, `verify_signature "$1" "$2"`, artifact, c.sig)
		if err == nil || !strings.Contains(out, "FAILURE: gateway artifact signature does not verify with "+root+SigningKeyFile) {
			t.Errorf("%s: accepted: %v\n%s", name, err, out)
		}
	}
	// Without the key nothing verifies.
	if err := os.WriteFile(artifact, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(root, SigningKeyFile)); err != nil {
		t.Fatal(err)
	}
	if out, err := runStep(env, `verify_signature "$1" "$2"`, artifact, good); err == nil || !strings.Contains(out, "FAILURE: no signing key") {
		t.Errorf("verified without a key: %v\n%s", err, out)
	}
}

func TestSigningKeyParam(t *testing.T) {
	p := baseBootstrap()
	p.SigningPublicKey = ""
	if _, err := RenderUserData(p); err == nil || !strings.Contains(err.Error(), "SigningPublicKey") {
		t.Errorf("no key: %v", err)
	}
	p.SigningPublicKey = string(testSigner.key) // the private half
	if _, err := RenderUserData(p); err == nil || !strings.Contains(err.Error(), "SigningPublicKey") {
		t.Errorf("private key accepted as the public key: %v", err)
	}
	p.SigningPublicKey = string(testSigner.pub) + "#cloud-config\n"
	if _, err := RenderUserData(p); err == nil {
		t.Error("text after the key accepted")
	}
	for _, edit := range []func(*Params){
		func(p *Params) { p.SigningPublicKey = "" },
		func(p *Params) { p.SigningPublicKey = string(testSigner.key) },
	} {
		hp := baseParams()
		edit(&hp)
		if _, err := Files(hp); err == nil || !strings.Contains(err.Error(), "SigningPublicKey") {
			t.Errorf("host files rendered with a bad key: %v", err)
		}
	}
	ud, err := RenderUserData(baseBootstrap())
	if err != nil {
		t.Fatal(err)
	}
	if b64 := strings.Split(string(testSigner.pub), "\n")[1]; !bytes.Contains(ud, []byte(b64)) {
		t.Error("user-data lacks the public key")
	}
	if bytes.Contains(ud, []byte("PRIVATE KEY")) {
		t.Error("user-data holds a private key")
	}
}

// TestHostFileHardening asserts on the rendered bytes: the internet-facing
// broker cannot reach the instance metadata service (so not the role's
// credentials), no service can read InfluxDB's token store, and neither the
// gateway's nor the export's configuration names the operator token.
func TestHostFileHardening(t *testing.T) {
	units, err := Units()
	if err != nil {
		t.Fatal(err)
	}
	deny := regexp.MustCompile(`(?m)^IPAddressDeny=(.*)$`).FindAllStringSubmatch(string(units["iotgw-broker.service"]), -1)
	var denied []string
	for _, m := range deny {
		denied = append(denied, strings.Fields(m[1])...)
	}
	for _, want := range []string{"169.254.169.254/32", "fd00:ec2::254/128"} {
		if !contains(denied, want) {
			t.Errorf("iotgw-broker.service IPAddressDeny= %v lacks %s", denied, want)
		}
	}
	if regexp.MustCompile(`(?m)^IPAddressAllow=`).Match(units["iotgw-broker.service"]) {
		t.Error("iotgw-broker.service has IPAddressAllow=, which wins over IPAddressDeny=")
	}
	// The gateway too: its secrets come resolved from iotgw-secrets.service.
	gw := string(units["iotgw.service"])
	if !strings.Contains(gw, "\nIPAddressDeny=169.254.169.254/32 fd00:ec2::254/128 link-local\n") || strings.Contains(gw, "IPAddressAllow=") {
		t.Error("iotgw.service can reach the instance metadata service")
	}
	for _, want := range []string{"\nWants=iotgw-secrets.service\n", " iotgw-secrets.service\n"} {
		if !strings.Contains(gw, want) {
			t.Errorf("iotgw.service lacks %q", want)
		}
	}
	sec := string(units["iotgw-secrets.service"])
	for _, want := range []string{"\nExecStart=" + SetupScript + " gateway-secrets\n", "\nRuntimeDirectory=iotgw-secrets\n", "\nRuntimeDirectoryMode=0700\n", "\nPartOf=iotgw.service\n", "\nRemainAfterExit=yes\n"} {
		if !strings.Contains(sec, want) {
			t.Errorf("iotgw-secrets.service lacks %q", want)
		}
	}
	for _, u := range []string{"iotgw.service", "iotgw-export.service", "iotgw-broker.service", "iotgw-secrets.service"} {
		if !strings.Contains(string(units[u]), "\nInaccessiblePaths=-/var/lib/influxdb -/data/influxdb\n") {
			t.Errorf("%s can read InfluxDB's token store", u)
		}
	}
	if !regexp.MustCompile(`(?m)^EnvironmentFile=` + regexp.QuoteMeta(ExportEnvFile) + `\n`).Match(units["iotgw-export.service"]) {
		t.Errorf("iotgw-export.service does not load %s", ExportEnvFile)
	}

	for name, p := range configs() {
		// What cloud-init writes, byte for byte, for each stack shape.
		for _, u := range []string{"iotgw-broker.service", "iotgw.service"} {
			if got := rendered(t, p, "/etc/systemd/system/"+u); !strings.Contains(got, "\nIPAddressDeny=169.254.169.254/32 fd00:ec2::254/128 link-local\n") {
				t.Errorf("%s: the %s the host gets can reach the instance metadata service", name, u)
			}
		}
		gw := rendered(t, p, GatewayConfig)
		if !strings.Contains(gw, `token = "ssm:`+p.ParamPath+`/influx-run-token"`) {
			t.Errorf("%s: gateway.toml does not use the run token:\n%s", name, gw)
		}
		env := rendered(t, p, ExportEnvFile)
		if !strings.Contains(env, "\nIOTGW_INFLUX_TOKEN=ssm:"+p.ParamPath+"/influx-export-token\n") {
			t.Errorf("%s: export.env does not set the export token:\n%s", name, env)
		}
		fl, _ := Files(p)
		for _, f := range fl {
			if f.Path != SetupScript && strings.Contains(f.Content, "/influx-token") {
				t.Errorf("%s: %s names the operator token", name, f.Path)
			}
		}
	}
}

// fakeInflux answers the InfluxDB 2 API calls iotgw-setup's token step
// makes, as InfluxDB 2's OpenAPI describes them (GET /api/v2/buckets, POST
// /api/v2/authorizations, GET and DELETE /api/v2/authorizations/{id}), and
// refuses any request without the operator token.
type fakeInflux struct {
	operator string
	mu       sync.Mutex
	auths    map[string]fakeAuth
	n        int
	posts    int
	deletes  []string
	errs     []string
}

type fakeAuth struct {
	OrgID       string            `json:"orgID"`
	Description string            `json:"description"`
	Permissions []json.RawMessage `json:"permissions"`
	ID          string            `json:"id"`
	Token       string            `json:"token"`
}

func (f *fakeInflux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Header.Get("Authorization") != "Token "+f.operator {
		f.errs = append(f.errs, r.Method+" "+r.URL.Path+" without the operator token")
		http.Error(w, `{"code":"unauthorized","message":"unauthorized access"}`, http.StatusUnauthorized)
		return
	}
	id, isAuth := strings.CutPrefix(r.URL.Path, "/api/v2/authorizations/")
	switch {
	case r.Method == "GET" && r.URL.Path == "/api/v2/buckets":
		if r.URL.Query().Get("org") != "iot" || r.URL.Query().Get("name") != "sensors" {
			f.errs = append(f.errs, "bucket lookup "+r.URL.RawQuery)
		}
		fmt.Fprint(w, `{"links":{},"buckets":[{"id":"b00000000000000b","orgID":"o00000000000000o","name":"sensors","type":"user","retentionRules":[]}]}`)
	case r.Method == "POST" && r.URL.Path == "/api/v2/authorizations":
		var a fakeAuth
		if err := json.NewDecoder(r.Body).Decode(&a); err != nil || r.Header.Get("Content-Type") != "application/json" {
			f.errs = append(f.errs, fmt.Sprintf("POST authorizations: %v", err))
			http.Error(w, `{"code":"invalid"}`, http.StatusBadRequest)
			return
		}
		f.n++
		f.posts++
		a.ID, a.Token = fmt.Sprintf("a%015d", f.n), fmt.Sprintf("tok-%d-%s==", f.n, strings.Repeat("x", 70))
		f.auths[a.ID] = a
		w.WriteHeader(http.StatusCreated)
		_ = json.NewEncoder(w).Encode(a)
	case isAuth && r.Method == "GET":
		a, ok := f.auths[id]
		if !ok {
			http.Error(w, `{"code":"not found","message":"authorization not found"}`, http.StatusNotFound)
			return
		}
		_ = json.NewEncoder(w).Encode(a)
	case isAuth && r.Method == "DELETE":
		f.deletes = append(f.deletes, id)
		if _, ok := f.auths[id]; !ok {
			http.Error(w, `{"code":"not found","message":"authorization not found"}`, http.StatusNotFound)
			return
		}
		delete(f.auths, id)
		w.WriteHeader(http.StatusNoContent)
	default:
		f.errs = append(f.errs, "unexpected "+r.Method+" "+r.URL.String())
		http.NotFound(w, r)
	}
}

func (f *fakeInflux) byToken(tok string) (fakeAuth, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.auths {
		if a.Token == tok {
			return a, true
		}
	}
	return fakeAuth{}, false
}

// TestInfluxTokensStep runs iotgw-setup's token step against fakeInflux and
// an aws stand-in keeping parameters in files: it makes a write-only token
// for `iotgw run` and a read-only one for `iotgw export`, stores each in its
// parameter, keeps them on a rerun, and makes a token again when InfluxDB
// lost it or the parameter was reset; no token is ever on a command line.
func TestInfluxTokensStep(t *testing.T) {
	requireTool(t, "curl", "curl")
	requireTool(t, "python3", "python3")
	_, env := stepEnv(t, baseParams())
	fake := &fakeInflux{operator: "operator-TOKEN-3f9a", auths: map[string]fakeAuth{}}
	srv := httptest.NewServer(fake)
	defer srv.Close()

	ps := newParamStore(t)
	param, setParam, argv := ps.get, ps.set, ps.argv
	setParam("influx-token", fake.operator)
	setParam("influx-run-token", TokenPlaceholder+" written by the host")
	setParam("influx-export-token", TokenPlaceholder+" written by the host")
	env = append(env, "INFLUX_URL="+srv.URL, "PATH="+ps.bin+":"+os.Getenv("PATH"), "OFFLINE=1")
	step := func() string {
		t.Helper()
		out, err := runStep(env, `influx_tokens; echo "changed=$CHANGED restart_gateway=$RESTART_GATEWAY"`)
		if err != nil {
			t.Fatalf("influx_tokens: %v\n%s", err, out)
		}
		return out
	}

	out := step()
	if !strings.Contains(out, "changed=2 restart_gateway=1") {
		t.Errorf("first run:\n%s", out)
	}
	perm := func(action, typ, id, org string) map[string]any {
		r := map[string]any{"type": typ}
		if id != "" {
			r["id"] = id
		}
		if org != "" {
			r["orgID"] = org
		}
		return map[string]any{"action": action, "resource": r}
	}
	const org, bucket = "o00000000000000o", "b00000000000000b"
	want := map[string][]map[string]any{
		"influx-run-token": {perm("write", "buckets", bucket, org)},
		"influx-export-token": {
			perm("read", "buckets", bucket, org), perm("read", "orgs", org, ""),
			perm("read", "dashboards", "", org), perm("read", "variables", "", org), perm("read", "labels", "", org),
		},
	}
	tokens := map[string]string{}
	for name, perms := range want {
		tokens[name] = param(name)
		a, ok := fake.byToken(tokens[name])
		if !ok {
			t.Fatalf("%s holds %q, not a token InfluxDB made", name, tokens[name])
		}
		var got []map[string]any
		b, _ := json.Marshal(a.Permissions)
		_ = json.Unmarshal(b, &got)
		if !reflect.DeepEqual(got, perms) || a.OrgID != org {
			t.Errorf("%s: org %s permissions %v, want %v", name, a.OrgID, got, perms)
		}
	}

	// A rerun keeps both.
	if out := step(); !strings.Contains(out, "changed=0 restart_gateway=0") || fake.posts != 2 {
		t.Errorf("rerun made tokens (%d made in all):\n%s", fake.posts, out)
	}

	// InfluxDB lost the run token (a restored volume, a manual delete): a
	// new one, and only that one.
	runAuth, _ := fake.byToken(tokens["influx-run-token"])
	fake.mu.Lock()
	delete(fake.auths, runAuth.ID)
	fake.mu.Unlock()
	if out := step(); !strings.Contains(out, "changed=1 restart_gateway=1") || fake.posts != 3 {
		t.Errorf("after InfluxDB lost the run token:\n%s", out)
	}
	if param("influx-run-token") == tokens["influx-run-token"] || param("influx-export-token") != tokens["influx-export-token"] {
		t.Error("the run token was not replaced alone")
	}

	// The parameter was reset (the stack was destroyed and made again, the
	// data volume kept): the old export token is revoked and replaced.
	exportAuth, _ := fake.byToken(tokens["influx-export-token"])
	setParam("influx-export-token", TokenPlaceholder+" written by the host")
	if out := step(); !strings.Contains(out, "changed=1 restart_gateway=0") || fake.posts != 4 {
		t.Errorf("after the export parameter was reset:\n%s", out)
	}
	if _, still := fake.byToken(exportAuth.Token); still || !contains(fake.deletes, exportAuth.ID) {
		t.Errorf("the replaced export token was not revoked (deletes %v)", fake.deletes)
	}
	if _, ok := fake.byToken(param("influx-export-token")); !ok {
		t.Error("the export parameter does not hold a live token")
	}

	if len(fake.errs) != 0 {
		t.Errorf("InfluxDB saw: %v", fake.errs)
	}
	log, _ := os.ReadFile(argv)
	secrets := []string{fake.operator}
	for _, a := range fake.auths {
		secrets = append(secrets, a.Token)
	}
	for _, s := range secrets {
		if strings.Contains(string(log), s) {
			t.Errorf("a token appeared on a command line:\n%s", log)
		}
	}
}

// paramStore is an aws stand-in on PATH that keeps the SSM parameters under
// /iot-gateway/dev/ as files and logs every command line.
type paramStore struct {
	dir, bin, argv string
	t              *testing.T
}

func newParamStore(t *testing.T) *paramStore {
	t.Helper()
	ps := &paramStore{dir: t.TempDir(), t: t}
	ps.argv, ps.bin = filepath.Join(ps.dir, "argv"), filepath.Join(ps.dir, "bin")
	if err := os.Mkdir(ps.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	aws := fmt.Sprintf(`#!/bin/bash
# aws stand-in: SSM parameters under /iot-gateway/dev/ as files in %[1]s.
echo "aws $*" >>%[2]q
[[ $1 == ssm ]] || exit 255
op=$2; shift 2
while [[ $# -gt 0 ]]; do
	case $1 in
	--name) name=${2#/iot-gateway/dev/}; shift ;;
	--value) value=$2; shift ;;
	--type) type=$2; shift ;;
	esac
	shift
done
case $op in
get-parameter) cat %[1]q/"$name" ;;
put-parameter)
	[[ $type == SecureString && $value == file://* ]] || { echo "put-parameter $name: type $type, value not from a file" >&2; exit 254; }
	cp "${value#file://}" %[1]q/"$name" ;;
*) exit 255 ;;
esac
`, ps.dir, ps.argv)
	if err := os.WriteFile(filepath.Join(ps.bin, "aws"), []byte(aws), 0o755); err != nil {
		t.Fatal(err)
	}
	return ps
}

func (ps *paramStore) get(name string) string {
	b, _ := os.ReadFile(filepath.Join(ps.dir, name))
	return string(b)
}

func (ps *paramStore) set(name, v string) {
	if err := os.WriteFile(filepath.Join(ps.dir, name), []byte(v), 0o600); err != nil {
		ps.t.Fatal(err)
	}
}

// TestGatewaySecretsStep runs `iotgw-setup gateway-secrets` (the step
// iotgw-secrets.service runs) against the aws stand-in: it writes the
// gateway's password and run token where iotgw.service reads them, root
// only, in a form the gateway's own config loader takes as the resolved
// values (so `iotgw run` makes no SSM call and needs no metadata service),
// and refuses a token not made yet and a password a systemd environment
// file would mangle.
func TestGatewaySecretsStep(t *testing.T) {
	root, env := stepEnv(t, baseParams())
	ps := newParamStore(t)
	const pw, tok = "q1w+/Zx9Lk3=mqtt", "Zm9vYmFy-run_TOKEN=="
	ps.set("mqtt-password", pw)
	ps.set("influx-run-token", tok)
	env = append(env, "PATH="+ps.bin+":"+os.Getenv("PATH"), "OFFLINE=1", "SECRETS_RETRY=0")
	if out, err := runStep(env, "gateway_secrets"); err != nil {
		t.Fatalf("gateway_secrets: %v\n%s", err, out)
	}
	units, _ := Units()
	m := regexp.MustCompile(`(?m)^EnvironmentFile=(.*)$`).FindAllStringSubmatch(string(units["iotgw.service"]), -1)
	envFile := m[len(m)-1][1]
	if envFile != "/run/iotgw-secrets/gateway.env" {
		t.Fatalf("iotgw.service's last EnvironmentFile= is %s", envFile)
	}
	fi, err := os.Stat(filepath.Join(root, envFile))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s mode %v, want 0600", envFile, fi.Mode().Perm())
	}
	b, _ := os.ReadFile(filepath.Join(root, envFile))
	vars := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		vars[k] = v
	}
	cfg, err := config.Load(writeTemp(t, "gateway.toml", rendered(t, baseParams(), GatewayConfig)), func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MQTT.Password != pw || cfg.Influx.Token != tok {
		t.Errorf("with %s the gateway has password %q and token %q", envFile, cfg.MQTT.Password, cfg.Influx.Token)
	}
	if ssmref.Any([]ssmref.Field{{Value: &cfg.MQTT.Username}, {Value: &cfg.MQTT.Password}, {Value: &cfg.Influx.Token}}) {
		t.Error("iotgw run would still call SSM")
	}
	if log, _ := os.ReadFile(ps.argv); strings.Contains(string(log), pw) || strings.Contains(string(log), tok) {
		t.Errorf("a secret on a command line:\n%s", log)
	}

	for name, c := range map[string]struct{ pw, tok, want string }{
		"token not made yet": {pw, TokenPlaceholder + " written by the host", "is not made yet"},
		"quote in password":  {`pw"with'quotes`, tok, "mqtt-password has characters"},
		"dollar in password": {"pw$HOME", tok, "mqtt-password has characters"},
		"newline in token":   {pw, tok + "\nIOTGW_X=1", "is not an InfluxDB token"},
	} {
		ps.set("mqtt-password", c.pw)
		ps.set("influx-run-token", c.tok)
		out, err := runStep(env, "gateway_secrets")
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("%s: %v\n%s", name, err, out)
		}
	}
	ps.set("mqtt-password", "")
	_ = os.Remove(filepath.Join(ps.dir, "mqtt-password"))
	if out, err := runStep(env, "gateway_secrets"); err == nil || !strings.Contains(out, "cannot read") {
		t.Errorf("no parameter: %v\n%s", err, out)
	}
}
