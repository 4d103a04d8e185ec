// Package app holds iot-gateway's domain: what a reading is, how an MQTT
// topic and payload become InfluxDB points, and the narrow interfaces
// between the pipeline's stages. It imports nothing outside the standard
// library and the line-protocol encoder; each outside dependency lives in
// its own sub-package (mqtt, influx, spool, sim, export, httpapi, config).
package app
