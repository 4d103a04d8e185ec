package gateway

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/iot-gateway/iot-gateway/app/sensor"
	"github.com/iot-gateway/iot-gateway/app/spool"
)

// metrics are the gateway's Prometheus series, all prefixed iotgw_.
type metrics struct {
	received      *prometheus.CounterVec
	receivedJSON  prometheus.Counter // received's children, looked up once:
	receivedLine  prometheus.Counter // they count every message
	rejected      *prometheus.CounterVec
	acked         prometheus.Counter
	pointsSpooled prometheus.Counter
	points        prometheus.Counter
	batches       *prometheus.CounterVec
	writeLatency  prometheus.Histogram
	writeErrors   *prometheus.CounterVec
	spoolWait     prometheus.Histogram
	fsync         prometheus.Histogram
	appendErrors  *prometheus.CounterVec
	connected     *prometheus.GaugeVec
	disconnects   *prometheus.CounterVec
	sessionsLost  prometheus.Counter
	ignored       *prometheus.CounterVec
	deadErrors    prometheus.Counter
}

// newMetrics registers the series; stats reads the spool's counters.
func newMetrics(reg *prometheus.Registry, stats func() spool.Stats) *metrics {
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_messages_received_total",
			Help: "MQTT messages received, by payload format."}, []string{"format"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_dead_letters_total",
			Help: "Messages or points written to the dead-letter file, by reason."}, []string{"reason"}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_messages_acked_total",
			Help: "MQTT messages acknowledged to the broker (after they were safe on disk, or dead-lettered)."}),
		pointsSpooled: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_points_spooled_total",
			Help: "Points appended to the durable spool."}),
		points: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_points_written_total",
			Help: "Points InfluxDB accepted."}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_write_batches_total",
			Help: "Write requests to InfluxDB, by result (ok, retry, rejected, too_large)."}, []string{"result"}),
		writeLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotgw_write_duration_seconds",
			Help: "Duration of one write request to InfluxDB.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_write_errors_total",
			Help: "Failed write requests, by class (network, status code)."}, []string{"class"}),
		spoolWait: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotgw_spool_wait_seconds",
			Help:    "Time from a reading entering the spool to InfluxDB accepting it (oldest of each batch).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "iotgw_spool_append_duration_seconds",
			Help: "Duration of one grouped spool append including fsync.", Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
		appendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_spool_append_errors_total",
			Help: "Spool appends that failed, by kind (full, io)."}, []string{"kind"}),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "iotgw_mqtt_connected",
			Help: "1 while the MQTT connection is up."}, []string{"connection"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_mqtt_disconnects_total",
			Help: "MQTT 5 sessions the broker ended with a DISCONNECT, by reason (session_taken_over, server_shutting_down, quota_exceeded, ...)."}, []string{"reason"}),
		sessionsLost: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_mqtt_sessions_lost_total",
			Help: "Connects where the broker had no session although this client id had one: what it queued for the gateway is gone."}),
		ignored: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "iotgw_messages_ignored_total",
			Help: "MQTT messages acknowledged but deliberately not stored, by reason (retained)."}, []string{"reason"}),
		deadErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "iotgw_dead_letter_write_errors_total",
			Help: "Dead letters that could not be written to the dead-letter file (counted in iotgw_dead_letters_total, not kept)."}),
	}
	m.receivedJSON = m.received.WithLabelValues(string(sensor.FormatJSON))
	m.receivedLine = m.received.WithLabelValues(string(sensor.FormatLine))
	stat := func(f func(spool.Stats) float64) func() float64 { return func() float64 { return f(stats()) } }
	reg.MustRegister(m.received, m.rejected, m.acked, m.pointsSpooled, m.points, m.batches, m.writeLatency,
		m.writeErrors, m.spoolWait, m.fsync, m.appendErrors, m.connected, m.disconnects, m.sessionsLost, m.ignored, m.deadErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_spool_bytes", Help: "Bytes in the spool waiting for InfluxDB."},
			stat(func(s spool.Stats) float64 { return float64(s.Bytes) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_spool_entries", Help: "Messages in the spool waiting for InfluxDB."},
			stat(func(s spool.Stats) float64 { return float64(s.Records) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_spool_oldest_age_seconds", Help: "Age of the oldest waiting message; 0 when empty."},
			stat(func(s spool.Stats) float64 {
				if s.Oldest.IsZero() {
					return 0
				}
				// Wall-clock time from disk: after the clock steps back it
				// lies in the future, which is no age at all.
				return max(time.Since(s.Oldest).Seconds(), 0)
			})),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "iotgw_spool_dropped_total", Help: "Messages the drop-oldest policy discarded before InfluxDB had them (never written)."},
			stat(func(s spool.Stats) float64 { return float64(s.Dropped) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "iotgw_spool_disk_free_bytes", Help: "Free space on the spool's filesystem; -1 when unknown."},
			stat(func(s spool.Stats) float64 { return float64(s.DiskFree) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "iotgw_spool_corrupt_records_total", Help: "Damaged records skipped or cut off the spool, at start or while reading."},
			stat(func(s spool.Stats) float64 { return float64(s.CorruptRecords) })),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}
