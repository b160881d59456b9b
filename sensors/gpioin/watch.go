package gpioin

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"periph.io/x/conn/v3/gpio"
)

// Opts configure an input.
type Opts struct {
	// Pull is the pin's internal resistor: gpio.PullUp (the default, for a
	// contact or an open-collector output to GND), gpio.PullDown or
	// gpio.Float (an external resistor, or a driven output).
	Pull gpio.Pull
	// Debounce: a level counts once the line has stayed at it this long
	// after its last edge. 0 takes every edge as it comes.
	Debounce time.Duration
	// Invert makes a low line the active level: a contact to GND that
	// pulls the line low when it closes reads as 1 when closed.
	Invert bool
	// Now is the clock that stamps edges, and After its timer; nil means
	// time.Now and time.After.
	Now   func() time.Time
	After func(time.Duration) <-chan time.Time
}

// ErrEdges is the error once the pin's edge detection fails: WaitForEdge
// returns at once without an edge, time after time.
var ErrEdges = errors.New("gpioin: edge detection failed")

// idleWait is how long the edge reader waits before it looks whether it
// should stop; a Halt of a pin interrupts the wait on gpiochip and sysfs
// pins, so this only bounds Halt on pins that do not.
const idleWait = 500 * time.Millisecond

// watcher follows a pin's edges. A reader goroutine waits in WaitForEdge
// and stamps each edge; the watch goroutine debounces them. It calls edge
// for each edge, and settled with the line's level once it has been quiet
// for the debounce time after an edge (at once without debounce).
type watcher struct {
	pin     gpio.PinIO
	pull    gpio.Pull
	kernel  gpio.Edge // the edges the pin reports
	o       Opts
	edge    func(at time.Time)
	settled func(l gpio.Level, at time.Time)
	idle    time.Duration
	// trace, when set (tests), is called after each edge and each
	// settling has been handled.
	trace func(event string, at time.Time)

	mu      sync.Mutex
	running bool
	halted  bool
	err     error // why the watch stopped
	stop    chan struct{}
	done    sync.WaitGroup
}

func newWatcher(p gpio.PinIO, kernel gpio.Edge, o *Opts) (*watcher, error) {
	if p == nil {
		return nil, errors.New("gpioin: no pin")
	}
	w := &watcher{pin: p, kernel: kernel, idle: idleWait}
	if o != nil {
		w.o = *o
	}
	if w.o.Debounce < 0 {
		return nil, fmt.Errorf("gpioin: negative debounce %s", w.o.Debounce)
	}
	switch w.o.Pull {
	case gpio.PullNoChange:
		w.pull = gpio.PullUp
	case gpio.PullUp, gpio.PullDown, gpio.Float:
		w.pull = w.o.Pull
	default:
		return nil, fmt.Errorf("gpioin: bad pull %s", w.o.Pull)
	}
	if w.o.Debounce > 0 {
		w.kernel = gpio.BothEdges // debouncing needs every edge
	}
	if w.o.Now == nil {
		w.o.Now = time.Now
	}
	if w.o.After == nil {
		w.o.After = time.After
	}
	return w, nil
}

// start configures the pin as an input and starts following it, unless it
// already does. When the watch stopped on an error, start returns the error
// once and then starts again.
func (w *watcher) start(first func(gpio.Level)) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.halted:
		return fmt.Errorf("gpioin: %s: halted", w.pin)
	case w.running:
		return nil
	case w.err != nil:
		err := w.err
		w.err = nil
		return err
	}
	if err := w.pin.In(w.pull, w.kernel); err != nil {
		return fmt.Errorf("gpioin: %s: configure input: %w", w.pin, err)
	}
	first(w.pin.Read())
	if w.kernel == gpio.NoEdge {
		return nil
	}
	w.running = true
	w.stop = make(chan struct{})
	edges := make(chan time.Time)
	failed := make(chan error, 1)
	w.done.Add(2)
	go w.read(w.stop, edges, failed)
	go w.watch(w.stop, edges, failed)
	return nil
}

// read waits for edges and sends their times on edges.
func (w *watcher) read(stop <-chan struct{}, edges chan<- time.Time, failed chan<- error) {
	defer w.done.Done()
	early := 0
	for {
		select {
		case <-stop:
			return
		default:
		}
		t0 := time.Now() // the pin's own timeout runs on the system clock
		if !w.pin.WaitForEdge(w.idle) {
			if time.Since(t0) < w.idle/2 {
				if early++; early == 3 {
					failed <- fmt.Errorf("%w on %s", ErrEdges, w.pin)
					return
				}
			}
			continue
		}
		early = 0
		select {
		case edges <- w.o.Now():
		case <-stop:
			return
		}
	}
}

// watch debounces the edges.
func (w *watcher) watch(stop <-chan struct{}, edges <-chan time.Time, failed <-chan error) {
	defer w.done.Done()
	var quiet <-chan time.Time
	var last time.Time
	for {
		select {
		case <-stop:
			return
		case err := <-failed:
			w.mu.Lock()
			w.running, w.err = false, err
			w.mu.Unlock()
			return
		case at := <-edges:
			if w.edge != nil {
				w.edge(at)
			}
			if w.o.Debounce == 0 {
				w.settle(at)
			} else {
				// Measured from the edge, not from now: an edge handled
				// late still settles on time.
				last, quiet = at, w.o.After(at.Add(w.o.Debounce).Sub(w.o.Now()))
			}
			w.traced("edge", at)
		case <-quiet:
			quiet = nil
			w.settle(last)
		}
	}
}

func (w *watcher) settle(at time.Time) {
	if w.settled != nil {
		w.settled(w.pin.Read(), at)
	}
	w.traced("settled", at)
}

func (w *watcher) traced(event string, at time.Time) {
	if w.trace != nil {
		w.trace(event, at)
	}
}

// halt stops following the pin and waits until it has.
func (w *watcher) halt() error {
	w.mu.Lock()
	w.halted = true
	running := w.running
	w.running = false
	if running {
		close(w.stop)
	}
	w.mu.Unlock()
	if !running {
		return nil
	}
	err := w.pin.Halt() // interrupts WaitForEdge
	w.done.Wait()
	if err != nil {
		return fmt.Errorf("gpioin: halt %s: %w", w.pin, err)
	}
	return nil
}

// active tells whether level l is the active one.
func (o *Opts) active(l gpio.Level) bool { return bool(l) != o.Invert }
