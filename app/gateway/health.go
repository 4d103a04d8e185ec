// Health: what /readyz reports (connections, the last write, dead letters,
// the spool's progress and size) and the systemd watchdog, which stops
// pinging while the appender or the writer is stuck on its disk.

package gateway

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/iot-gateway/iot-gateway/app/httpapi"
	"github.com/iot-gateway/iot-gateway/app/mqtt"
)

// heartbeat tells the watchdog whether a loop makes progress. A loop is
// alive while it waits for work and while an operation it began recently
// is running; an operation that does not return (a write to a wedged disk
// holding the spool's lock) makes it stale. Monotonic time, so a clock
// step cannot fake either.
type heartbeat struct{ busySince atomic.Int64 } // monoNow at begin; 0 while idle

var monoEpoch = time.Now()

// monoNow is monotonic nanoseconds since start, never 0.
func monoNow() int64 { return int64(time.Since(monoEpoch)) + 1 }

func (h *heartbeat) begin() { h.busySince.Store(monoNow()) }

func (h *heartbeat) end() { h.busySince.Store(0) }

// stuck is how long the current operation has been running; 0 when idle.
func (h *heartbeat) stuck() time.Duration {
	s := h.busySince.Load()
	if s == 0 {
		return 0
	}
	return time.Duration(monoNow() - s)
}

// Ready returns nil when the broker is connected, the last write did not
// fail, and the spool is healthy; otherwise what is wrong.
func (g *Gateway) Ready() error {
	var errs []error
	for _, c := range g.checks() {
		if err := c(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (g *Gateway) checks() map[string]httpapi.Check {
	return map[string]httpapi.Check{
		"mqtt": func() error {
			for i := range g.connected {
				if !g.connected[i].Load() {
					return fmt.Errorf("mqtt connection %d is down", i+1)
				}
			}
			return nil
		},
		"influx": func() error {
			if p := g.writeErr.Load(); p != nil {
				return fmt.Errorf("last write failed: %s", *p)
			}
			return nil
		},
		"deadletter": func() error {
			if p := g.deadErr.Load(); p != nil {
				return fmt.Errorf("dead-letter writes failing: %s", *p)
			}
			return nil
		},
		"spool": func() error {
			if loop := g.stalled(g.stallLimit); loop != "" {
				return fmt.Errorf("spool not making progress: the %s's operation has run for over %s", loop, g.stallLimit)
			}
			if p := g.appendErr.Load(); p != nil {
				return fmt.Errorf("spool append failing: spool: %s", *p)
			}
			if st := g.spool.Stats(); st.Bytes > g.degraded {
				return fmt.Errorf("degraded: %d bytes waiting (threshold %d)", st.Bytes, g.degraded)
			}
			return nil
		},
	}
}

func (g *Gateway) onState(conn int, up bool, err error) {
	if conn < len(g.connected) {
		g.connected[conn].Store(up)
	}
	if up {
		g.markSession()
	}
	if de := (*mqtt.DisconnectError)(nil); !up && errors.As(err, &de) && !de.Connack {
		g.m.disconnects.WithLabelValues(mqtt.ReasonName(de.Code)).Inc()
	}
	v := 0.0
	if up {
		v = 1
	}
	g.m.connected.WithLabelValues(strconv.Itoa(conn + 1)).Set(v)
}

// stalled names a loop whose current operation has run longer than limit
// (the appender in an Append, the writer reading or committing the spool),
// "" when both are waiting for work or progressing.
func (g *Gateway) stalled(limit time.Duration) string {
	if g.appendBeat.stuck() > limit {
		return "appender"
	}
	// A Read that began with records waiting may have skipped damaged
	// ones and be waiting for appends now: it is stuck only while records
	// still wait. (Stats does not wait for a write in progress.)
	if g.writeBeat.stuck() > limit && g.spool.Stats().Records > 0 {
		return "writer"
	}
	return ""
}

// watchdog pings systemd's watchdog while the appender and the writer make
// progress, so a gateway wedged on its disk (a write that never returns)
// is restarted instead of reported healthy. Without systemd it does
// nothing.
func (g *Gateway) watchdog(ctx context.Context) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil || interval == 0 {
		return
	}
	// An operation stuck for half the interval stops the pings; systemd
	// restarts the service an interval after the last one.
	limit := interval / 2
	t := time.NewTicker(interval / 3)
	defer t.Stop()
	quiet := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if loop := g.stalled(limit); loop != "" {
			if !quiet {
				g.log.Error("watchdog: the spool is not making progress; no longer telling systemd all is well",
					"loop", loop, "limit", limit)
				quiet = true
			}
			continue
		}
		if quiet {
			g.log.Info("watchdog: the spool makes progress again")
			quiet = false
		}
		_, _ = daemon.SdNotify(false, daemon.SdNotifyWatchdog)
	}
}
