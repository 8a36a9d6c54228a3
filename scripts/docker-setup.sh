#!/usr/bin/env bash
# Prepare a Debian 12 machine (root, no systemd, no registry) for the image tests:
#   1. install docker.io + debootstrap (+ iproute2, openssh-client/-server for the multi-host suite,
#      chromium + libnss3-tools for the browser check; sshd is never started or configured here) if missing
#      (policy-rc.d first, one apt-get update),
#   2. start dockerd in the background if the engine does not answer,
#   3. fabricate the public base tags the Dockerfiles name, only if missing:
#        debian:bookworm-slim    debootstrap minbase + trim, `docker import`
#        node:20-bookworm-slim   the host's Node.js 20 + npm on top of debian:bookworm-slim
#        docker:cli              the host's docker client at /usr/local/bin/docker (for COPY --from)
# Idempotent: a second run only checks and prints what it found.
#
# Environment: DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR (default: what apt uses, else deb.debian.org),
#              DOCKERD_LOG (default /var/log/dockerd.log), FORCE_REBUILD_BASES=1 (re-fabricate tags).
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKER_SOCK=/var/run/docker.sock
T0=$(date +%s%N)
step_start=$T0

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
log() { printf '[docker-setup +%6sms] %s\n' "$(ms_since "$T0")" "$*"; }
step() { step_start=$(date +%s%N); log "==> $*"; }
done_step() { log "    done in $(ms_since "$step_start") ms${1:+ ($1)}"; }
die() { log "ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# ------------------------------------------------------------------ packages
step "packages"
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The multi-host suite's second Docker host: a network namespace (ip, nsenter) and an sshd of its own.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
# The stack suite's browser check: Debian's chromium (driven by playwright-core) and certutil (NSS db with the dev CA).
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v certutil >/dev/null 2>&1 || missing+=(libnss3-tools)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Keep Debian from starting daemons (no systemd here; we start what we need ourselves).
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    log "    created /usr/sbin/policy-rc.d (exit 101)"
  fi
  log "    installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  done_step "installed ${missing[*]}"
else
  done_step "docker.io, debootstrap, curl, iproute2, openssh, chromium, certutil already installed"
fi

# ------------------------------------------------------------------ dockerd
step "docker engine"
if docker info >/dev/null 2>&1; then
  done_step "already running"
else
  running_pid=""
  if [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    running_pid=$(cat /var/run/docker.pid)
    log "    dockerd (pid $running_pid) is starting; waiting for it"
  else
    rm -f /var/run/docker.pid
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    log "    starting dockerd (log: $DOCKERD_LOG)"
    setsid nohup dockerd --host="unix://$DOCKER_SOCK" >>"$DOCKERD_LOG" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 300); do
    if [ -S "$DOCKER_SOCK" ] && docker info >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  docker info >/dev/null 2>&1 || { tail -n 30 "$DOCKERD_LOG" >&2 || true; die "dockerd did not answer on $DOCKER_SOCK within 60 s"; }
  done_step "engine $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
fi

have_tag() { [ "${FORCE_REBUILD_BASES:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

# ------------------------------------------------------------------ debian:bookworm-slim
apt_uri_for() {
  # First URI apt uses for the given path suffix (debian / debian-security), deb822 or one-line format.
  local suffix=$1
  { grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{ for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }'
  } | grep -E "/${suffix}/?\$" | head -n1 || true
}

if have_tag debian:bookworm-slim; then
  log "==> debian:bookworm-slim already present ($(docker image inspect -f '{{.Id}}' debian:bookworm-slim | cut -c1-19))"
else
  step "fabricating debian:bookworm-slim (debootstrap minbase)"
  mirror="${DEBIAN_MIRROR:-$(apt_uri_for debian)}"; mirror="${mirror:-http://deb.debian.org/debian}"
  sec_mirror="${DEBIAN_SECURITY_MIRROR:-$(apt_uri_for debian-security)}"; sec_mirror="${sec_mirror:-http://deb.debian.org/debian-security}"
  rootfs=$(mktemp -d /var/tmp/demiurge-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  log "    mirror $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.debootstrap.log" 2>&1 \
    || { tail -n 30 "$rootfs.debootstrap.log" >&2; die "debootstrap failed (log: $rootfs.debootstrap.log)"; }
  rm -f "$rootfs.debootstrap.log"
  log "    debootstrap done; trimming"
  cat > "$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $sec_mirror bookworm-security main
EOF
  cat > "$rootfs/etc/apt/apt.conf.d/docker-no-recommends" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
EOF
  cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker-excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
  printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"; chmod 755 "$rootfs/usr/sbin/policy-rc.d"
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* "$rootfs"/usr/share/lintian/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* \
         "$rootfs"/tmp/* "$rootfs"/etc/hostname "$rootfs"/etc/resolv.conf
  : > "$rootfs/etc/machine-id"
  log "    importing ($(du -sm "$rootfs" | cut -f1) MB)"
  tar --numeric-owner -C "$rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . \
    | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' \
        -c 'LABEL org.demiurge.fabricated=debootstrap-minbase' \
        -c 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  rm -rf "$rootfs"; trap - EXIT
  done_step "$(docker image inspect -f '{{.Size}}' debian:bookworm-slim | awk '{printf "%d MB", $1/1e6}')"
fi

# ------------------------------------------------------------------ node:20-bookworm-slim
if have_tag node:20-bookworm-slim; then
  log "==> node:20-bookworm-slim already present ($(docker image inspect -f '{{.Id}}' node:20-bookworm-slim | cut -c1-19))"
else
  step "fabricating node:20-bookworm-slim from the host's Node.js"
  node_bin="${NODE_BINARY:-$(command -v node || true)}"
  [ -n "$node_bin" ] || die "no node binary on this machine (set NODE_BINARY)"
  node_bin=$(readlink -f "$node_bin")
  node_version=$("$node_bin" --version)
  case "$node_version" in v20.*) ;; *) die "host node is $node_version, need v20.x (set NODE_BINARY)";; esac
  npm_dir=""
  for d in "$(dirname "$node_bin")/../lib/node_modules/npm" /usr/lib/node_modules/npm /usr/local/lib/node_modules/npm; do
    [ -f "$d/bin/npm-cli.js" ] && { npm_dir=$(readlink -f "$d"); break; }
  done
  [ -n "$npm_dir" ] || die "npm not found next to $node_bin"
  ctx=$(mktemp -d /var/tmp/demiurge-nodebase.XXXXXX)
  trap 'rm -rf "$ctx"' EXIT
  cp "$node_bin" "$ctx/node"
  cp -a "$npm_dir" "$ctx/npm"
  cat > "$ctx/Dockerfile" <<EOF
FROM debian:bookworm-slim
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && node --version && npm --version
ENV NODE_VERSION=${node_version#v}
LABEL org.demiurge.fabricated=host-node
CMD ["node"]
EOF
  docker build -q -t node:20-bookworm-slim "$ctx" >/dev/null 2>"$ctx.err" || { cat "$ctx.err" >&2; die "node base build failed"; }
  rm -rf "$ctx" "$ctx.err"; trap - EXIT
  done_step "node $node_version"
fi

# ------------------------------------------------------------------ docker:cli
if have_tag docker:cli; then
  log "==> docker:cli already present"
else
  step "fabricating docker:cli (docker client for COPY --from)"
  cli=""
  for c in /usr/local/bin/docker /usr/bin/docker; do
    [ -x "$c" ] && { cli=$c; break; }
  done
  [ -n "$cli" ] || die "no docker client binary found"
  ctx=$(mktemp -d /var/tmp/demiurge-dockercli.XXXXXX)
  trap 'rm -rf "$ctx"' EXIT
  cp "$cli" "$ctx/docker"
  printf 'FROM scratch\nCOPY docker /usr/local/bin/docker\nLABEL org.demiurge.fabricated=host-docker-client\n' > "$ctx/Dockerfile"
  docker build -q -t docker:cli "$ctx" >/dev/null 2>"$ctx.err" || { cat "$ctx.err" >&2; die "docker:cli build failed"; }
  rm -rf "$ctx" "$ctx.err"; trap - EXIT
  done_step "from $cli ($("$cli" --version 2>/dev/null | head -n1))"
fi

log "ready in $(ms_since "$T0") ms"
