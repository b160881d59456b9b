package gateway

import (
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/fieldgate/fieldgate/localbroker"
	"github.com/fieldgate/fieldgate/sensors"
)

// validateSensorLoop checks the keys of sensor key that the poll loop
// reads (timeout, qos, topic, deadband, max_silence), and fills in their
// defaults.
func (c *Config) validateSensorLoop(errs *[]error, key string, s *SensorConfig) {
	if c.has(key+".timeout") && (s.Timeout.Duration < time.Millisecond || s.Timeout.Duration > s.Interval.Duration) {
		c.errorf(errs, key+".timeout", "must be between 1ms and the interval (%s), got %s", s.Interval, s.Timeout)
	}
	if !c.has(key + ".qos") {
		s.QoS = 1
	}
	if s.QoS != 0 && s.QoS != 1 {
		c.errorf(errs, key+".qos", "must be 0 or 1, got %d", s.QoS)
	}
	if !c.has(key + ".topic") {
		s.Topic = sensors.DefaultTopic
	} else if err := sensors.CheckTopic(s.Topic); err != nil {
		c.errorf(errs, key+".topic", "%s", strings.TrimPrefix(err.Error(), "sensors: "))
	}
	// Two sensors must not publish on the same topics.
	topic := func(o *SensorConfig) string { return sensors.ExpandTopic(o.Topic, c.Device.ID, o.Name, "%q") }
	for j := range c.Sensors {
		if o := &c.Sensors[j]; o == s {
			break
		} else if o.Name != s.Name && topic(o) == topic(s) {
			c.errorf(errs, key+".topic", "%q gives sensor[%d]'s topics (%s)", s.Topic, j, topic(s))
		}
	}
	for _, q := range slices.Sorted(maps.Keys(s.Deadband)) {
		switch v := s.Deadband[q]; {
		case !nameRE.MatchString(q):
			c.errorf(errs, key+".deadband."+q, "%q is not a quantity name", q)
		case v < 0 || math.IsNaN(v) || math.IsInf(v, 0):
			c.errorf(errs, key+".deadband."+q, "must be 0 (publish on any change) or more, got %v", v)
		}
	}
	if c.has(key + ".max_silence") {
		switch {
		case len(s.Deadband) == 0:
			c.errorf(errs, key+".max_silence", "needs a deadband: without one every reading is published")
		case s.MaxSilence.Duration < s.Interval.Duration:
			c.errorf(errs, key+".max_silence", "must be at least the interval (%s), got %s", s.Interval, s.MaxSilence)
		}
	}
}

// clearSensorStatus removes the retained status of each sensor of old
// whose status topic none of now has: a sensor taken out of the
// configuration does not stay "ok" on the broker for ever.
func (g *Gateway) clearSensorStatus(old, now []SensorConfig) {
	topic := func(s SensorConfig) string {
		return sensors.ExpandTopic(s.Topic, g.cfg.Device.ID, s.Name, sensors.StatusQuantity)
	}
	kept := map[string]bool{}
	for _, s := range now {
		kept[topic(s)] = true
	}
	for _, s := range old {
		if t := topic(s); !kept[t] {
			if err := g.broker.Publish(localbroker.Message{Topic: t, QoS: 1, Retain: true}); err != nil {
				g.log.Warn("reload: the removed sensor's retained status stays", "sensor", s.Name, "topic", t, "err", err)
			}
		}
	}
}

// writeSensors writes the poll loop's metrics: each sensor's state, and
// its counters.
func (m *metrics) writeSensors(p promWriter) {
	l := m.g.sensorLoop()
	if l == nil {
		return
	}
	status, counts := l.Status(), l.Counts()
	names := slices.Sorted(maps.Keys(status))
	p.help("fieldgate_sensor_state", "gauge", "1 for the state each sensor is in: ok, absent (the chip does not answer) or failing (it answers with errors).")
	for _, n := range names {
		for _, st := range sensors.States {
			v := 0.0
			if status[n].State == st {
				v = 1
			}
			p.sample("fieldgate_sensor_state", v, "sensor", n, "state", string(st))
		}
	}
	for _, c := range []struct {
		name, help string
		v          func(sensors.Counts) uint64
	}{
		{"fieldgate_sensor_reads_total", "Sensor reads attempted, retries included.", func(c sensors.Counts) uint64 { return c.Reads }},
		{"fieldgate_sensor_read_errors_total", "Sensor reads that ended in an error.", func(c sensors.Counts) uint64 { return c.ReadErrors }},
		{"fieldgate_sensor_published_total", "Sensor values published on the local broker.", func(c sensors.Counts) uint64 { return c.Published }},
		{"fieldgate_sensor_suppressed_total", "Sensor values within their deadband, not published.", func(c sensors.Counts) uint64 { return c.Suppressed }},
	} {
		p.help(c.name, "counter", c.help)
		for _, n := range names {
			p.sample(c.name, float64(c.v(counts[n])), "sensor", n)
		}
	}
	p.help("fieldgate_sensor_dropped_total", "counter", "Sensor values read but not published, by reason: out_of_range (outside the chip's range), not_finite, publish (the broker refused it).")
	for _, n := range names {
		for _, r := range []string{sensors.DropRange, sensors.DropNotFinite, sensors.DropPublish} {
			p.sample("fieldgate_sensor_dropped_total", float64(counts[n].Dropped[r]), "sensor", n, "reason", r)
		}
	}
}
