package localbroker

import (
	"encoding/json"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/packets"
	bolt "go.etcd.io/bbolt"
)

// retainStore keeps retained messages in bbolt, so they survive a restart.
// Writes are gathered and committed once a second: a retained message is
// the last known state of a topic, not a delivery, and a power cut loses
// at most the last second's changes, never the file.
type retainStore struct {
	mqtt.HookBase
	db   *bolt.DB
	log  *slog.Logger
	ops  chan retainOp
	done chan struct{}

	// The gateway's waiter may still deliver a stored publish, retained,
	// after the broker closed (the outbox commits last): closed makes the
	// hook drop it instead of sending on a closed channel.
	mu     sync.RWMutex
	closed bool
}

type retainOp struct {
	topic string
	value []byte // nil: delete
}

var retainBucket = []byte("retained")

// retainFlush is how often retained changes are committed.
const retainFlush = time.Second

func openRetainStore(path string, log *slog.Logger) (*retainStore, error) {
	db, err := openStateFile(path, "retained-message store", [][]byte{retainBucket}, nil, log)
	if err != nil {
		return nil, err
	}
	s := &retainStore{db: db, log: log, ops: make(chan retainOp, 1024), done: make(chan struct{})}
	go s.writer()
	return s, nil
}

func (s *retainStore) ID() string { return "fieldgate-retained" }

func (s *retainStore) Provides(b byte) bool {
	return b == mqtt.OnRetainMessage || b == mqtt.StoredRetainedMessages
}

func (s *retainStore) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	if r == -1 {
		s.send(retainOp{topic: pk.TopicName})
		return
	}
	m := storage.Message{
		T:           storage.RetainedKey,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		FixedHeader: pk.FixedHeader,
		Created:     pk.Created,
		Origin:      pk.Origin,
		Properties: storage.MessageProperties{
			PayloadFormat:         pk.Properties.PayloadFormat,
			MessageExpiryInterval: pk.Properties.MessageExpiryInterval,
			ContentType:           pk.Properties.ContentType,
			ResponseTopic:         pk.Properties.ResponseTopic,
			CorrelationData:       pk.Properties.CorrelationData,
			User:                  pk.Properties.User,
		},
	}
	v, err := json.Marshal(m)
	if err != nil {
		return
	}
	s.send(retainOp{topic: pk.TopicName, value: v})
}

func (s *retainStore) send(op retainOp) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.log.Warn("retained message after the broker closed: not saved", "topic", op.topic)
		return
	}
	s.ops <- op
}

// StoredRetainedMessages gives mochi the retained messages at start.
func (s *retainStore) StoredRetainedMessages() ([]storage.Message, error) {
	var out []storage.Message
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(retainBucket).ForEach(func(k, v []byte) error {
			var m storage.Message
			if err := json.Unmarshal(v, &m); err != nil {
				s.log.Warn("retained message unreadable: skipped", "topic", string(k), "err", err)
				return nil
			}
			out = append(out, m)
			return nil
		})
	})
	return out, err
}

func (s *retainStore) writer() {
	defer close(s.done)
	pending := map[string][]byte{}
	var due <-chan time.Time
	flush := func() {
		if len(pending) == 0 {
			return
		}
		err := s.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(retainBucket)
			for t, v := range pending {
				var err error
				if v == nil {
					err = b.Delete([]byte(t))
				} else {
					err = b.Put([]byte(t), v)
				}
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			s.log.Error("retained messages not saved", "messages", len(pending), "err", err)
		}
		clear(pending)
	}
	for {
		select {
		case op, ok := <-s.ops:
			if !ok {
				flush()
				return
			}
			pending[op.topic] = op.value // the last change of a topic wins
			if due == nil {
				due = time.After(retainFlush)
			}
		case <-due:
			flush()
			due = nil
		}
	}
}

// close saves what is pending and closes the file.
func (s *retainStore) close() error {
	s.mu.Lock()
	s.closed = true
	close(s.ops)
	s.mu.Unlock()
	<-s.done
	return s.db.Close()
}
