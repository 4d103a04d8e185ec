// Package app holds iot-gateway's domain: what a reading is and how an
// MQTT topic and payload become InfluxDB line protocol (Mapper). Beyond
// the standard library it imports only what decoding needs (gjson for JSON
// payloads, the line-protocol encoder); each outside service lives in its
// own sub-package (mqtt, influx, spool, sim, export, httpapi, config). The
// interfaces between the pipeline's stages (Store, PointWriter, DeadSink,
// Connect) are declared in app/gateway, where they are used.
package app
