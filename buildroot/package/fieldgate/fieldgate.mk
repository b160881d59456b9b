################################################################################
#
# fieldgate
#
################################################################################

# A released tag. The golang-package infrastructure downloads the Go modules
# go.mod names at download time and keeps them in the tarball in DL_DIR, so
# the build itself needs no network. A local checkout (FIELDGATE_OVERRIDE_SRCDIR)
# is not vendored by Buildroot: run `go mod vendor` in it first.
FIELDGATE_VERSION = 0.1.0
FIELDGATE_SITE = $(call github,fieldgate,fieldgate,v$(FIELDGATE_VERSION))
FIELDGATE_LICENSE = Proprietary
FIELDGATE_GOMOD = github.com/fieldgate/fieldgate
FIELDGATE_BUILD_TARGETS = cmd/fieldgate
FIELDGATE_LDFLAGS = -s -w -X main.version=$(FIELDGATE_VERSION)

ifeq ($(BR2_PACKAGE_FIELDGATE_PKCS11),y)
FIELDGATE_TAGS = pkcs11
else
FIELDGATE_GO_ENV = CGO_ENABLED=0
endif

# A fixed uid, so that state written under /var/lib/fieldgate keeps its
# owner across image updates.
define FIELDGATE_USERS
	fieldgate 990 fieldgate 990 * /var/lib/fieldgate - i2c,gpio,tss Fieldgate edge gateway
endef

define FIELDGATE_INSTALL_CONFIG
	$(INSTALL) -D -m 0640 $(@D)/systemd/fieldgate.toml \
		$(TARGET_DIR)/etc/fieldgate/fieldgate.toml
	$(INSTALL) -D -m 0644 $(@D)/systemd/60-fieldgate.rules \
		$(TARGET_DIR)/usr/lib/udev/rules.d/60-fieldgate.rules
	$(INSTALL) -D -m 0644 $(@D)/systemd/fieldgate-modules.conf \
		$(TARGET_DIR)/usr/lib/modules-load.d/fieldgate.conf
endef
FIELDGATE_POST_INSTALL_TARGET_HOOKS += FIELDGATE_INSTALL_CONFIG

define FIELDGATE_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/systemd/fieldgate.service \
		$(TARGET_DIR)/usr/lib/systemd/system/fieldgate.service
endef

$(eval $(golang-package))
