package gateway

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestParseConfigDriverOptions(t *testing.T) {
	c, err := ParseConfig("f.toml", []byte(`[device]
id = "a"

[[sensor]]
name = "tank"
driver = "ads1115"
address = 0x49
channel = "ain0-ain1"
gain = 4.096
data_rate = 860
scale = [0.6, 3, 0, 1e6]
unit = "Pa"
quantity = "pressure"

[[sensor]]
name = "door"
driver = "gpio"
pin = "GPIO17"
debounce = "20ms"
invert = true

[[sensor]]
name = "rain"
driver = "pulse"
pin = "GPIO27"
pull = "none"
edge = "rising"
`))
	if err != nil {
		t.Fatal(err)
	}
	adc, door, rain := c.Sensors[0].options(), c.Sensors[1].options(), c.Sensors[2].options()
	if adc.Channel != "ain0-ain1" || adc.Gain != "4.096" || adc.DataRate != 860 || len(adc.Scale) != 4 || adc.Scale[1] != 3 ||
		adc.Unit != "Pa" || adc.Quantity != "pressure" || c.Sensors[0].Bus != "/dev/i2c-1" {
		t.Errorf("ads1115 options: got %+v", adc)
	}
	if c.Sensors[1].Pin != "GPIO17" || door.Debounce == nil || *door.Debounce != 20*time.Millisecond || !door.Invert {
		t.Errorf("gpio options: got %+v", door)
	}
	if rain.Debounce != nil || rain.Pull != "none" || rain.Edge != "rising" || c.Sensors[2].Bus != "" {
		t.Errorf("pulse options: got %+v", rain)
	}
}

// A pin the board does not have leaves that sensor absent, and nothing
// else: the gateway opens the others.
func TestMissingPin(t *testing.T) {
	g := &Gateway{log: slog.New(slog.DiscardHandler)}
	s := g.openSensor(SensorConfig{Name: "door", Driver: "gpio", Pin: "GPIO-none"})
	defer s.Halt()
	_, err := s.Sense(context.Background())
	if err == nil || !strings.Contains(err.Error(), `gpio: no pin "GPIO-none" on this board`) {
		t.Fatalf("got %v, want the missing pin named", err)
	}
}
