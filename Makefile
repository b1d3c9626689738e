# Hangar: two commands on a fresh Debian 12 machine (as root):
#   make demo   — install what is missing, build, boot a VM, serve until Ctrl-C
#   make test   — run every test layer
GO ?= go
PKGS := qemu-system-x86 qemu-utils linux-image-cloud-amd64 busybox-static extlinux syslinux-common isolinux genisoimage fdisk e2fsprogs cpio iproute2 xz-utils mount util-linux bsdutils
TEST_PKGS := chromium
GUEST_DIR ?= /var/cache/hangar/guest

.PHONY: demo test deps build guest bench clean webui

deps:
	@missing=""; for p in $(PKGS) $(EXTRA_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

build:
	$(GO) build -buildvcs=auto -ldflags "-X hangar/internal/buildinfo.Version=$(VERSION)" -o bin/hangar ./cmd/hangar

guest: deps
	bash guest/build.sh $(GUEST_DIR)

# The demo takes the terminal's foreground for itself, so Ctrl-C reaches it alone; it cleans up and exits 130,
# which is how it ends normally: not an error of make's.
demo: deps build guest
	@./bin/hangar demo --image $(GUEST_DIR)/hangar-guest.qcow2 $(DEMO_FLAGS) || [ $$? -eq 130 ]

# The browser tests need chromium (headless); the demo does not.
test: EXTRA_PKGS = $(TEST_PKGS)
test: deps guest
	HANGAR_GUEST_DIR=$(GUEST_DIR) HANGAR_TEST_RACE=1 $(GO) test -race -count=1 -timeout 60m ./...

bench: deps build guest
	./bin/hangar bench boot --image $(GUEST_DIR)/hangar-guest.qcow2 --runs 5
	./bin/hangar bench place --hosts 2500 --vms 50000

# The web UI's browser libraries (web/package-lock.json pins them): copied into internal/webui/static/vendor/,
# which is committed, so that a clone builds without npm. Run after changing web/package.json.
VENDOR := internal/webui/static/vendor
webui:
	cd web && npm ci --no-audit --no-fund
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)
	for f in @xterm/xterm/lib/xterm.mjs @xterm/xterm/css/xterm.css @xterm/addon-fit/lib/addon-fit.mjs \
	  uplot/dist/uPlot.esm.js uplot/dist/uPlot.min.css; do \
	  sed '/^\/\/# sourceMappingURL=/d' web/node_modules/$$f > $(VENDOR)/$$(basename $$f); done
	cp web/node_modules/@xterm/xterm/LICENSE $(VENDOR)/LICENSE.xterm
	cp web/node_modules/@xterm/addon-fit/LICENSE $(VENDOR)/LICENSE.addon-fit
	cp web/node_modules/uplot/LICENSE $(VENDOR)/LICENSE.uplot
	cd web && npm ls --all | tail -n +2 > ../$(VENDOR)/VERSIONS

clean:
	rm -rf bin
