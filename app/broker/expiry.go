package broker

import (
	"bytes"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// expiryHook removes an expired session's subscriptions. mochi v2.7.9
// deletes an expired client but leaves its subscriptions in the topic
// tree; for a shared subscription that member keeps getting its turn, and
// every message dealt to it is dropped because no client holds it any
// more: silent loss for the live members' group. (Upstream, mochi's
// clearExpiredClients should unsubscribe the client it expires.)
type expiryHook struct {
	mqtt.HookBase
	srv *mqtt.Server
}

func (h *expiryHook) ID() string { return "iotgw-expiry" }

func (h *expiryHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnClientExpired}, []byte{b})
}

func (h *expiryHook) OnClientExpired(cl *mqtt.Client) {
	h.srv.UnsubscribeClient(cl)
	cl.ClearInflights()
}
