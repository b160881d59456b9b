# Fieldgate. The README's two commands: `make demo` and `make test`.

GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BUILD   := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"
CMDS    := fieldgate $(notdir $(wildcard cmd/fieldgate-factory))

.PHONY: all build test demo lint cross bench image clean

all: build

build:
	@mkdir -p bin
	$(foreach c,$(CMDS),$(BUILD) -o bin/$(c) ./cmd/$(c) &&) true

# Installs the test peers (Mosquitto, …) when missing, then runs every test.
# FIELDGATE_REQUIRE_PEERS=1 makes a missing peer a failure, not a skip.
# The second run builds with cgo and the pkcs11 tag for the SoftHSM2 tests.
test:
	./.ci/deps
	FIELDGATE_REQUIRE_PEERS=1 $(GO) test -count=1 -timeout 20m ./...
	FIELDGATE_REQUIRE_PEERS=1 CGO_ENABLED=1 $(GO) test -count=1 -timeout 10m -tags pkcs11 -run PKCS11 ./...

demo:
	./demo/run.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Static, stripped binaries for the Raspberry Pi family, in dist/.
cross:
	@mkdir -p dist
	$(foreach c,$(CMDS),\
	GOOS=linux GOARCH=arm64 $(BUILD) -o dist/$(c)-linux-arm64 ./cmd/$(c) && \
	GOOS=linux GOARCH=arm GOARM=7 $(BUILD) -o dist/$(c)-linux-armv7 ./cmd/$(c) && \
	GOOS=linux GOARCH=arm GOARM=6 $(BUILD) -o dist/$(c)-linux-armv6 ./cmd/$(c) &&) true
	@ls -l dist/

bench:
	./.ci/deps
	FIELDGATE_REQUIRE_PEERS=1 $(GO) test -count=1 -run '^$$' -bench . -benchmem -timeout 30m ./...

# An SD card image with Buildroot: make image BOARD=rpi4_64 BUILDROOT=path
BOARD ?= rpi4_64
image:
	@test -n "$(BUILDROOT)" || { echo "set BUILDROOT to a Buildroot checkout (see buildroot/README.md)"; exit 2; }
	$(MAKE) -C $(BUILDROOT) BR2_EXTERNAL=$(CURDIR)/buildroot O=$(CURDIR)/output/$(BOARD) fieldgate_$(BOARD)_defconfig
	$(MAKE) -C $(BUILDROOT) O=$(CURDIR)/output/$(BOARD)
	@echo "image: output/$(BOARD)/images/sdcard.img"

clean:
	rm -rf bin dist demo/run
