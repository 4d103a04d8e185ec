package broker

import (
	"strconv"
	"strings"

	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
)

// boltStore is mochi's bbolt storage hook with one repair: its OnQosPublish
// (v2.7.9) stores queued messages without their packet id, so after a
// restart they all come back as packet id 0 and overwrite each other in the
// client's inflight map, leaving one. The id is also the tail of each
// record's key ("<prefix>_<client id>:<packet id>"), so it is restored from
// there.
type boltStore struct {
	*bolt.Hook
}

func (s boltStore) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := s.Hook.StoredInflightMessages()
	for i := range msgs {
		if msgs[i].PacketID != 0 {
			continue
		}
		k := strings.LastIndexByte(msgs[i].ID, ':')
		if k < 0 {
			continue
		}
		if id, perr := strconv.ParseUint(msgs[i].ID[k+1:], 10, 16); perr == nil {
			msgs[i].PacketID = uint16(id)
		}
	}
	return msgs, err
}
