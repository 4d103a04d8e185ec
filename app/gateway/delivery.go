// Delivery: the writer loop (writeLoop, the one goroutine that owns the
// spool's read side and the InfluxDB writer) drains the spool in batches,
// waits briefly for a small batch to fill, retries transient failures and
// splits a rejected batch to dead-letter only its bad points.

package gateway

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/iot-gateway/iot-gateway/app/influx"
	"github.com/iot-gateway/iot-gateway/app/internal/backoff"
	"github.com/iot-gateway/iot-gateway/app/sensor"
	"github.com/iot-gateway/iot-gateway/app/spool"
)

// writeLoop drains the spool into InfluxDB. On draining it stops once the
// spool is empty; on ctx cancel at once.
func (g *Gateway) writeLoop(ctx context.Context, draining <-chan struct{}) {
	batchSize := g.opt.BatchSize
	linger := g.opt.FlushInterval
	var lines [][]byte // reused: the lines of the batch in hand
	// When the writer first saw the small batch at the head of the spool
	// (monotonic; zero once a batch is committed). The age read back from
	// disk is wall-clock time: after the clock steps back it is negative
	// and would keep the batch waiting for as long as the step.
	var lingerFrom time.Time
	// A failing disk is retried like a failing append, but from a second:
	// each failure is logged.
	readRetry := backoff.Backoff{Initial: time.Second, Max: 5 * time.Second}
	// idleCtx also ends when draining begins, so a Read waiting on an idle
	// spool notices it; once draining, Reads use ctx itself.
	idleCtx, cancelIdle := context.WithCancel(ctx)
	defer cancelIdle()
	go func() {
		select {
		case <-draining:
			cancelIdle()
		case <-idleCtx.Done():
		}
	}()
	for {
		isDraining := false
		select {
		case <-draining:
			isDraining = true
			if g.spool.Stats().Records == 0 {
				return
			}
		default:
		}
		readCtx := idleCtx
		if isDraining {
			readCtx = ctx
		}
		// A Read of an empty spool waits for appends (idle); one with
		// records waiting is disk work the watchdog must see finish.
		waiting := g.spool.Stats().Records > 0
		if waiting {
			g.writeBeat.begin()
		}
		batch, err := g.spool.Read(readCtx, batchSize, batchMaxBytes)
		g.writeBeat.end()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, spool.ErrClosed) {
				return
			}
			if readCtx.Err() != nil {
				continue // draining began
			}
			g.log.Error("spool read", "err", err)
			select {
			case <-time.After(readRetry.Next()):
			case <-ctx.Done():
				return
			}
			continue
		}
		readRetry.Reset()
		// A small batch waits up to flush_interval for company: fewer,
		// larger writes cost InfluxDB far less than many small ones.
		if len(batch.Records) < batchSize && !isDraining {
			if lingerFrom.IsZero() {
				lingerFrom = time.Now()
			}
			if wait := lingerWait(linger, g.now().Sub(batch.Oldest), time.Since(lingerFrom)); wait > 0 {
				g.spool.Rewind()
				select {
				case <-time.After(wait):
				case <-draining:
				case <-ctx.Done():
					return
				}
				continue
			}
		}
		// The batch is written and committed even if drop-oldest discards
		// its records from disk while the database is away: it is in
		// memory, so they are not lost, and the spool counts a discarded
		// record as dropped only once Rewind gives it up (see spool's
		// dropFor). So nothing counted as dropped is ever written, and
		// nothing is re-read because of a drop.
		lines = splitLines(lines[:0], batch.Records)
		if err := g.deliver(ctx, lines); err != nil {
			// ctx ended; the batch stays spooled, and what drop-oldest
			// discarded of it is counted now. (If a rejected batch was
			// being split, halves already written are counted too if they
			// were discarded: the spool commits whole batches only.)
			g.spool.Rewind()
			return
		}
		g.writeBeat.begin()
		err = g.spool.Commit(batch.End)
		g.writeBeat.end()
		if err != nil {
			g.log.Error("spool commit", "err", err)
		}
		lingerFrom = time.Time{}
		if age := g.now().Sub(batch.Oldest); age >= 0 {
			g.m.spoolWait.Observe(age.Seconds())
		}
		select {
		case g.committed <- struct{}{}:
		default:
		}
	}
}

// lingerWait is how much longer a small batch waits: until its oldest
// record is linger old, by the wall clock (age, from the spool), but never
// longer than linger after the writer first saw it (seen, monotonic),
// whatever the wall clock did meanwhile.
func lingerWait(linger, age, seen time.Duration) time.Duration {
	wait := linger - seen
	if age >= 0 {
		wait = min(wait, linger-age)
	}
	return max(wait, 0)
}

// splitLines flattens records (each one or more complete lines) to lines,
// appending to lines.
func splitLines(lines, records [][]byte) [][]byte {
	for _, r := range records {
		for len(r) > 0 {
			i := bytes.IndexByte(r, '\n')
			if i < 0 {
				lines = append(lines, r)
				break
			}
			lines = append(lines, r[:i+1])
			r = r[i+1:]
		}
	}
	return lines
}

// deliver writes lines, retrying transient failures forever. A batch the
// database rejects is split in halves until the bad points are found; they
// go to the dead-letter file and the rest is written. What the database
// says it dropped ("partial write: ... dropped=N") prunes the split: a
// part that holds only bad points is dead-lettered without more requests,
// and the second half's count follows from its parent's and the first
// half's. The split is bounded by maxSplitRequests; what is unresolved
// then is dead-lettered whole.
func (g *Gateway) deliver(ctx context.Context, lines [][]byte) error {
	budget := maxSplitRequests
	_, err := g.deliverPart(ctx, lines, -1, &budget)
	return err
}

// deliverPart writes lines and returns how many of them the database
// rejected, -1 when its answers did not say. bad > 0 means an earlier
// answer already showed lines to hold exactly bad rejected points, so the
// request is not sent again; 0 (known good) and -1 (unknown) send it.
func (g *Gateway) deliverPart(ctx context.Context, lines [][]byte, bad int, budget *int) (int, error) {
	tooLarge := false
	if bad <= 0 {
		err := g.send(ctx, lines)
		*budget--
		var we *influx.WriteError
		if err == nil {
			return 0, nil
		}
		if !errors.As(err, &we) {
			return -1, err
		}
		if tooLarge = we.TooLarge(); tooLarge {
			if len(lines) == 1 {
				g.rejectLines(lines, sensor.ReasonTooLarge, err)
				return 1, nil
			}
			bad = -1
		} else {
			bad = dropped(we)
			if len(lines) == 1 || bad == len(lines) {
				g.rejectLines(lines, sensor.ReasonRejected, err)
				return len(lines), nil
			}
			g.lastReject = err
		}
	} else if bad >= len(lines) {
		g.rejectLines(lines, sensor.ReasonRejected, g.lastReject)
		return len(lines), nil
	}
	// Too large is not the points' fault: those halves are always written.
	if !tooLarge && *budget <= 0 {
		g.rejectLines(lines, reasonPartlyRejected, fmt.Errorf(
			"%w (not narrowed down within %d requests; InfluxDB may have stored the good points among these)",
			g.lastReject, maxSplitRequests))
		return bad, nil
	}
	half := len(lines) / 2
	left, err := g.deliverPart(ctx, lines[:half], -1, budget)
	if err != nil {
		return -1, err
	}
	right := -1
	if bad >= 0 && left >= 0 && bad >= left {
		right = bad - left
	}
	got, err := g.deliverPart(ctx, lines[half:], right, budget)
	if err != nil {
		return -1, err
	}
	if bad < 0 && left >= 0 && got >= 0 {
		bad = left + got
	}
	return bad, nil
}

// send writes lines as one request, retrying transient failures.
func (g *Gateway) send(ctx context.Context, lines [][]byte) error {
	// The body buffer is reused: it is needed only until the write below
	// returns, and the lines point into the spool's batch, not into it, so
	// even the halves of a split can build their bodies in it.
	body := g.body[:0]
	for _, l := range lines {
		body = append(body, l...)
	}
	g.body = body
	err := g.writeWithRetry(ctx, body, len(lines))
	if err != nil {
		// After a refusal or a timeout the HTTP transport may still be
		// reading the old body: never write into it again.
		g.body = nil
	}
	if err == nil && g.onWritten != nil {
		g.onWritten(lines, time.Now())
	}
	return err
}

// dropped is how many points a rejection says the server dropped, -1
// when it does not say. InfluxDB (1.8 and 2) answers a field type conflict
// with "partial write: ... dropped=N"; lines it cannot parse are not
// counted in N, so an answer that mentions a parse error says nothing.
func dropped(we *influx.WriteError) int {
	msg := we.Message
	if !strings.Contains(msg, "partial write") || strings.Contains(msg, "unable to parse") {
		return -1
	}
	i := strings.LastIndex(msg, "dropped=")
	if i < 0 {
		return -1
	}
	digits := msg[i+len("dropped="):]
	if j := strings.IndexFunc(digits, func(r rune) bool { return r < '0' || r > '9' }); j >= 0 {
		digits = digits[:j]
	}
	d, err := strconv.Atoi(digits)
	if err != nil {
		return -1
	}
	return d
}

// rejectLines dead-letters points the database will not take.
func (g *Gateway) rejectLines(lines [][]byte, reason string, cause error) {
	cause = errors.New(g.scrub(cause.Error()))
	now := time.Now()
	for _, l := range lines {
		g.m.rejected.WithLabelValues(reason).Inc()
		g.deadLetter(now, "", reason, cause, bytes.TrimSuffix(l, []byte("\n")))
	}
	g.log.Warn("points rejected by InfluxDB", "points", len(lines), "reason", reason, "err", cause)
}

// scrub makes a server's error text fit for logs and dead letters: the
// token never appears (a server that echoes requests would return it), and
// the text is cut to maxErrText.
func (g *Gateway) scrub(s string) string {
	if tok := g.opt.Secret; tok != "" {
		s = strings.ReplaceAll(s, tok, "[token]")
	}
	if len(s) > maxErrText {
		s = s[:maxErrText] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// writeWithRetry returns nil, ctx's error, or a *influx.WriteError the
// database will never accept as it is (rejected or too large).
func (g *Gateway) writeWithRetry(ctx context.Context, body []byte, points int) error {
	bo := backoff.Backoff{Initial: 100 * time.Millisecond, Max: g.opt.MaxRetryInterval}
	for {
		start := time.Now()
		err := g.writer.Write(ctx, body)
		g.m.writeLatency.Observe(time.Since(start).Seconds())
		if err == nil {
			g.m.batches.WithLabelValues("ok").Inc()
			g.m.points.Add(float64(points))
			if g.writeErr.Swap(nil) != nil {
				g.log.Info("influx writes succeed again")
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var we *influx.WriteError
		if errors.As(err, &we) && we.Rejected() {
			g.m.batches.WithLabelValues("rejected").Inc()
			return err
		}
		if errors.As(err, &we) && we.TooLarge() {
			g.m.batches.WithLabelValues("too_large").Inc()
			return err
		}
		g.m.batches.WithLabelValues("retry").Inc()
		class := "network"
		if we != nil && we.Status != 0 {
			class = strconv.Itoa(we.Status)
		}
		g.m.writeErrors.WithLabelValues(class).Inc()
		if g.writeErr.Swap(&class) == nil {
			g.log.Error("influx write failing; readings stay spooled and are retried", "err", g.scrub(err.Error()))
		}
		// Never sooner than the server asked for.
		var retryAfter time.Duration
		if we != nil {
			retryAfter = we.RetryAfter
		}
		wait := bo.NextAtLeast(retryAfter)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
