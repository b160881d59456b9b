# Fieldgate. The README's two commands: `make demo` and `make test`.

GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BUILD   := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"
CMDS    := fieldgate $(notdir $(wildcard cmd/fieldgate-factory))

.PHONY: all build test demo lint cross bench clean

all: build

build:
	@mkdir -p bin
	$(foreach c,$(CMDS),$(BUILD) -o bin/$(c) ./cmd/$(c) &&) true

# Installs the test peers (Mosquitto, …) when missing, then runs every test.
# FIELDGATE_REQUIRE_PEERS=1 makes a missing peer a failure, not a skip.
test:
	./.ci/deps
	FIELDGATE_REQUIRE_PEERS=1 $(GO) test -count=1 -timeout 20m ./...

demo:
	./demo/run.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Static, stripped binaries for the Raspberry Pi family.
cross:
	@mkdir -p bin
	GOOS=linux GOARCH=arm64 $(BUILD) -o bin/fieldgate-linux-arm64 ./cmd/fieldgate
	GOOS=linux GOARCH=arm GOARM=7 $(BUILD) -o bin/fieldgate-linux-armv7 ./cmd/fieldgate
	GOOS=linux GOARCH=arm GOARM=6 $(BUILD) -o bin/fieldgate-linux-armv6 ./cmd/fieldgate

bench:
	./.ci/deps
	FIELDGATE_REQUIRE_PEERS=1 $(GO) test -count=1 -run '^$$' -bench . -benchmem -timeout 30m ./...

clean:
	rm -rf bin demo/run
