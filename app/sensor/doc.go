// Package sensor holds iot-gateway's domain: what a reading is and how an
// MQTT topic and payload become InfluxDB line protocol (Mapper), with the
// one cache of per-topic work (TopicCache). It is named for what it is
// about, so call sites read sensor.Message, sensor.Mapper,
// sensor.ReasonNotJSON. Beyond the standard library it imports only what
// decoding needs (gjson for JSON payloads, the line-protocol encoder);
// each outside service lives in its own package under app/ (mqtt, influx,
// spool, sim, export, httpapi, config). The
// interfaces between the pipeline's stages (Store, PointWriter, DeadSink,
// Connect) are declared in app/gateway, where they are used.
package sensor
