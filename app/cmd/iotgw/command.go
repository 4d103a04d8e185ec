package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/iot-gateway/iot-gateway/app/command"
	"github.com/iot-gateway/iot-gateway/app/config"
	"github.com/iot-gateway/iot-gateway/app/gateway"
	"github.com/iot-gateway/iot-gateway/app/httpapi"
	"github.com/iot-gateway/iot-gateway/app/mqtt"
)

// commandToken returns the API's bearer token from commands.token or the
// file commands.token_file names.
func commandToken(c config.Commands) (string, error) {
	if c.Token != "" {
		if len(c.Token) < 16 {
			return "", fmt.Errorf("commands.token has %d characters; use at least 16", len(c.Token))
		}
		return c.Token, nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return "", fmt.Errorf("commands.token_file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("commands.token_file: %s holds a token of %d characters; use at least 16", c.TokenFile, len(tok))
	}
	return tok, nil
}

// checkCommands fails at start, naming the key, on a token or TLS pair
// that cannot be used.
func checkCommands(c config.Commands) error {
	if !c.Enabled() {
		return nil
	}
	if _, err := commandToken(c); err != nil {
		return &exitError{Code: 2, Err: fmt.Errorf("config: %w", err)}
	}
	if c.TLSCertFile != "" {
		if _, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile); err != nil {
			return &exitError{Code: 2, Err: fmt.Errorf("config: commands.tls_cert_file, commands.tls_key_file: %w", err)}
		}
	}
	return nil
}

// startCommands wires commands into the gateway when the API is
// configured: the journal, the MQTT 5 command connection, the API and the
// page on http.addr. The returned stop closes them; nil when off.
func startCommands(ctx context.Context, cfg config.Config, g *gateway.Gateway, log *slog.Logger) (stop func(), err error) {
	if !cfg.Commands.Enabled() {
		return func() {}, nil
	}
	tok, err := commandToken(cfg.Commands)
	if err != nil {
		return nil, &exitError{Code: 2, Err: fmt.Errorf("config: %w", err)}
	}
	gwID := cfg.MapperConfig().StaticTags["gateway"]
	m, err := command.Open(command.Options{
		Dir: cfg.Spool.Dir, History: cfg.Commands.History, MaxArgBytes: cfg.Commands.MaxArgBytes,
		Expiry: cfg.Commands.Expiry.Duration, Gateway: gwID, Known: g.Fleet().Known, Registry: g.Registry(), Log: log,
		OnChange: func(c command.Command) { g.Record(commandPoint(c, gwID)) },
	})
	if err != nil {
		return nil, err
	}
	mc := cfg.MQTT
	var tc *tls.Config
	if strings.HasPrefix(mc.URL, "ssl") || strings.HasPrefix(mc.URL, "tls") || strings.HasPrefix(mc.URL, "wss") || strings.HasPrefix(mc.URL, "mqtts") {
		t, err := mqtt.TLSConfig(mqtt.Config{CAFile: mc.CAFile, CertFile: mc.CertFile, KeyFile: mc.KeyFile, InsecureSkipVerify: mc.InsecureSkipVerify})
		if err != nil {
			m.Close()
			return nil, &exitError{Code: 2, Err: fmt.Errorf("config: mqtt.ca_file: %w", err)}
		}
		tc = t
	}
	clientID := cfg.Commands.ClientID
	if clientID == "" {
		clientID = mc.ClientID + "-commands"
	}
	cctx, cancel := context.WithCancel(ctx)
	conn, err := command.Dial(cctx, command.ConnConfig{URL: mc.URL, ClientID: clientID, Username: mc.Username, Password: mc.Password,
		TLS: tc, KeepAlive: mc.KeepAlive.Duration, ConnectTimeout: mc.ConnectTimeout.Duration,
		ReplyFilter: command.ReplyFilter(gwID)}, m, log, nil)
	if err != nil {
		cancel()
		m.Close()
		return nil, err
	}
	m.SetPublisher(conn)
	go m.Run(cctx)
	g.Detail("commands", func() any {
		return map[string]any{"connected": conn.Connected(), "client_id": clientID}
	})
	api := &httpapi.API{Token: tok, Commands: m, Fleet: g.Fleet(), Registry: g.Registry(),
		DeadLetters: func(n int) any { return g.DeadLetters(n) }}
	for pattern, h := range api.Routes() {
		g.Handle(pattern, h)
	}
	log.Info("command API on", "addr", cfg.HTTP.Addr, "tls", cfg.Commands.TLSCertFile != "", "client_id", clientID)
	return func() {
		conn.Close()
		cancel()
		m.Close()
	}, nil
}

// commandPoint is one lifecycle transition as a line-protocol point:
// measurement iotgw_command, tags site, device, name, state, gateway.
func commandPoint(c command.Command, gwID string) []byte {
	site, dev, _ := strings.Cut(c.Device, "/")
	var b bytes.Buffer
	b.WriteString("iotgw_command,device=")
	b.WriteString(dev) // names are checked to letters, digits, - _ .: nothing to escape
	if gwID != "" {
		b.WriteString(",gateway=")
		b.WriteString(escapeTag(gwID))
	}
	b.WriteString(",name=" + c.Name + ",site=" + site + ",state=" + string(c.State))
	b.WriteString(" id=" + strconv.Quote(c.ID))
	if c.State == command.Answered {
		b.WriteString(",latency_ms=" + strconv.FormatFloat(c.LatencyMS, 'f', -1, 64))
	}
	if c.Error != "" {
		b.WriteString(",error=\"" + escapeField(c.Error) + "\"")
	}
	at := c.Created
	switch {
	case !c.Finished.IsZero():
		at = c.Finished
	case !c.Delivered.IsZero():
		at = c.Delivered
	}
	b.WriteString(" " + strconv.FormatInt(at.UnixNano(), 10) + "\n")
	return b.Bytes()
}

func escapeTag(s string) string {
	return strings.NewReplacer(",", `\,`, " ", `\ `, "=", `\=`).Replace(s)
}

func escapeField(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", " ").Replace(s)
}

// apiClient talks to a gateway's command API.
type apiClient struct {
	base  string
	token string
	http  *http.Client
}

// newAPIClient finds the API: --url, else http(s)://<http.addr> of the
// configuration; the token from --token-file, IOTGW_COMMANDS_TOKEN or the
// configuration's commands.token / token_file.
func newAPIClient(cfgPath, apiURL, tokenFile, caFile string) (*apiClient, error) {
	cfg, err := config.Load(cfgPath, os.LookupEnv)
	if err != nil {
		return nil, &exitError{Code: 2, Err: fmt.Errorf("config: %w", err)}
	}
	if apiURL == "" {
		if cfg.HTTP.Addr == "" {
			return nil, &exitError{Code: 2, Err: errors.New("no API address: give --url or set http.addr")}
		}
		scheme := "http"
		if cfg.Commands.TLSCertFile != "" {
			scheme = "https"
		}
		host, port, _ := net.SplitHostPort(cfg.HTTP.Addr)
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		apiURL = scheme + "://" + net.JoinHostPort(host, port)
	}
	if tokenFile != "" {
		cfg.Commands.Token, cfg.Commands.TokenFile = "", tokenFile
	}
	if !cfg.Commands.Enabled() {
		return nil, &exitError{Code: 2, Err: errors.New("no API token: give --token-file or set IOTGW_COMMANDS_TOKEN")}
	}
	tok, err := commandToken(cfg.Commands)
	if err != nil {
		return nil, &exitError{Code: 2, Err: err}
	}
	hc := &http.Client{Timeout: maxWaitFlag + 30*time.Second}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, &exitError{Code: 2, Err: fmt.Errorf("--ca-file: %w", err)}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &exitError{Code: 2, Err: fmt.Errorf("--ca-file: %s holds no PEM certificate", caFile)}
		}
		hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}}
	}
	return &apiClient{base: strings.TrimSuffix(apiURL, "/"), token: tok, http: hc}, nil
}

// maxWaitFlag bounds --wait (the API's own bound).
const maxWaitFlag = 5 * time.Minute

func (c *apiClient) do(ctx context.Context, method, path string, body any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		var e struct{ Error, Reason string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s (%s, HTTP %d)", e.Error, e.Reason, resp.StatusCode)
		}
		return nil, fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, b)
	}
	return b, nil
}

// parseArg reads key=value: a value that is JSON (a number, true, false,
// null, a quoted string, an object or array) is sent as such, anything
// else as a string.
func parseArg(s string) (string, json.RawMessage, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return "", nil, fmt.Errorf("--arg %q is not key=value", s)
	}
	if json.Valid([]byte(v)) && v != "" {
		return k, json.RawMessage(v), nil
	}
	b, _ := json.Marshal(v)
	return k, b, nil
}

func newCommandCmd() *cobra.Command {
	var cfgPath, apiURL, tokenFile, caFile string
	root := &cobra.Command{
		Use:   "command",
		Short: "Send commands to devices through a running gateway and follow them",
		Long: `Send a command to a device through the gateway's command API and follow its
lifecycle (sent, delivered, answered, failed, expired). The API is found at
--url or at http.addr of the configuration; the bearer token is read from
--token-file, IOTGW_COMMANDS_TOKEN or the configuration.`,
	}
	pf := root.PersistentFlags()
	pf.StringVarP(&cfgPath, "config", "c", "", "the gateway's TOML configuration (for http.addr and the token)")
	pf.StringVar(&apiURL, "url", "", "the gateway's API, e.g. http://127.0.0.1:9273")
	pf.StringVar(&tokenFile, "token-file", "", "file holding the API's bearer token")
	pf.StringVar(&caFile, "ca-file", "", "PEM CA bundle to trust for an https:// API (default system roots)")

	var device, name string
	var args []string
	var wait, expiry time.Duration
	var asJSON bool
	send := &cobra.Command{
		Use:   "send --device <site>/<device> --name <command> [--arg key=value ...] [--wait 10s]",
		Short: "Send a command; with --wait, wait for the device's answer",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if device == "" || name == "" {
				return &exitError{Code: 2, Err: errors.New("--device and --name are required")}
			}
			if wait < 0 || wait > maxWaitFlag {
				return &exitError{Code: 2, Err: fmt.Errorf("--wait %v is not between 0 and %v", wait, maxWaitFlag)}
			}
			a := map[string]json.RawMessage{}
			for _, s := range args {
				k, v, err := parseArg(s)
				if err != nil {
					return &exitError{Code: 2, Err: err}
				}
				a[k] = v
			}
			c, err := newAPIClient(cfgPath, apiURL, tokenFile, caFile)
			if err != nil {
				return err
			}
			body := map[string]any{"device": device, "name": name, "args": a}
			if wait > 0 {
				body["wait"] = wait.String()
			}
			if expiry > 0 {
				body["expiry"] = expiry.String()
			}
			out, err := c.do(cmd.Context(), http.MethodPost, "/api/commands", body)
			if err != nil {
				return fmt.Errorf("command send: %w", err)
			}
			return printCommand(cmd.OutOrStdout(), out, asJSON, wait > 0)
		},
	}
	f := send.Flags()
	f.StringVar(&device, "device", "", "<site>/<device>")
	f.StringVar(&name, "name", "", "the command, e.g. set_interval")
	f.StringArrayVar(&args, "arg", nil, "key=value argument (repeatable); JSON values are sent as such")
	f.DurationVar(&wait, "wait", 0, "wait this long for the answer (0: return once the broker has it)")
	f.DurationVar(&expiry, "expiry", 0, "how long the device may take (default commands.expiry)")
	f.BoolVar(&asJSON, "json", false, "print the command record as JSON")

	var statusWait time.Duration
	var statusJSON bool
	status := &cobra.Command{
		Use:   "status <id>",
		Short: "Show a command's lifecycle",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := newAPIClient(cfgPath, apiURL, tokenFile, caFile)
			if err != nil {
				return err
			}
			path := "/api/commands/" + url.PathEscape(a[0])
			if statusWait > 0 {
				path += "?wait=" + statusWait.String()
			}
			out, err := c.do(cmd.Context(), http.MethodGet, path, nil)
			if err != nil {
				return fmt.Errorf("command status: %w", err)
			}
			return printCommand(cmd.OutOrStdout(), out, statusJSON, statusWait > 0)
		},
	}
	status.Flags().DurationVar(&statusWait, "wait", 0, "wait this long for the command to be final")
	status.Flags().BoolVar(&statusJSON, "json", false, "print the command record as JSON")
	root.AddCommand(send, status)
	return root
}

// printCommand prints a command record; with waited, a command that is
// not answered is an error (exit 1), so scripts can tell.
func printCommand(w io.Writer, raw json.RawMessage, asJSON, waited bool) error {
	var c command.Command
	if err := json.Unmarshal(raw, &c); err != nil {
		return fmt.Errorf("the API answered something that is not a command: %w", err)
	}
	if asJSON {
		var buf bytes.Buffer
		_ = json.Indent(&buf, raw, "", "  ")
		fmt.Fprintln(w, buf.String())
	} else {
		fmt.Fprintf(w, "id        %s\ndevice    %s\ncommand   %s %s\nstate     %s\ncreated   %s\n", c.ID, c.Device, c.Name, c.Args, c.State, c.Created.Format(time.RFC3339Nano))
		if !c.Delivered.IsZero() {
			fmt.Fprintf(w, "delivered %s\n", c.Delivered.Format(time.RFC3339Nano))
		}
		if !c.Finished.IsZero() {
			fmt.Fprintf(w, "finished  %s\n", c.Finished.Format(time.RFC3339Nano))
		}
		if c.State == command.Answered {
			fmt.Fprintf(w, "latency   %.1f ms\nresult    %s\n", c.LatencyMS, c.Result)
		}
		if c.Error != "" {
			fmt.Fprintf(w, "error     %s\n", c.Error)
		}
	}
	if waited && c.State != command.Answered {
		return fmt.Errorf("command %s is %s", c.ID, c.State)
	}
	return nil
}
