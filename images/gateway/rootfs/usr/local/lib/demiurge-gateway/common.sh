# Shared by the gateway scripts (sourced, not executed).
GATEWAY_ROOT="${GATEWAY_ROOT:-/opt/gateway}"          # symlink to the current release
RELEASES_DIR="${RELEASES_DIR:-/opt/gateway-releases}"  # unpacked builds, swapped atomically
RUN_DIR="${RUN_DIR:-/run/gateway}"
LOG_FILE="${LOG_FILE:-/tmp/gateway.log}"             # the app's stdout/stderr
APP_MAIN="${GATEWAY_ROOT}/app-gateway/main.js"
# Uploaded by the Pulumi program (runtime/gateway-app bundled); run while no build is packed.
DEFAULT_APP_MAIN="${DEFAULT_APP_MAIN:-/usr/local/share/demiurge-gateway/default-app/main.js}"
UC_CONF_DIR="${UC_CONF_DIR:-/etc/nginx/gateway.d}"

# The app runs in two slots on two loopback ports (gateway-supervise): the current app, which stage-2
# nginx routes to, and during a reload the candidate beside it; a reload switches nginx between them.
APP_PORTS="${APP_PORTS:-8888 8889}"
APP_PIDFILE="$RUN_DIR/app.pid"          # pid of the current app (absent while it is down)
APP_BUILDFILE="$RUN_DIR/app.build"      # build id the current app was started from
APP_PORTFILE="$RUN_DIR/app.port"        # port of the current app = the port stage-2 nginx routes to
CANDIDATE_REQUEST="$RUN_DIR/candidate.request"  # "<port> <release>": gateway-reload asks for a candidate
UPSTREAM_CONF="${UPSTREAM_CONF:-/etc/nginx/gateway-app-upstream.conf}"  # stage-2 nginx: upstream gateway_app
SUPERVISOR_PIDFILE="$RUN_DIR/supervisor.pid"
SUPERVISOR_WAKE="$RUN_DIR/supervisor.wake"   # FIFO: a line written there ends the supervisor's nap at once
# FIFO of candidate events, read by gateway-reload: the supervisor writes "started <pid>" and
# "exited <pid> <rc>", a candidate app that knows APP_READY_FIFO "ready <pid>" once it listens. Only
# wake-ups: what happened is always read from the slot files, so a lost or stale line costs one turn.
CANDIDATE_EVENTS="$RUN_DIR/candidate.events"
APP_LOCK="$RUN_DIR/app.lock"            # serializes "start app" (supervisor) and "signal app" (reload)
BUILD_LOCK="$RUN_DIR/build.lock"        # serializes fetch + swap
RELOAD_LOCK="$RUN_DIR/reload.lock"      # one reload at a time
NGINX_LOCK="$RUN_DIR/nginx.lock"        # one nginx config change at a time
# Test hook of gateway-reload (absent in normal operation; see pause_point there):
RELOAD_PAUSE_AT="$RUN_DIR/reload-pause-at"  # names of the points at which a reload waits, one per line
RELOAD_PAUSED="$RUN_DIR/reload-paused"      # "<point> <detail>" while a reload waits there
RELOAD_RELEASE="$RUN_DIR/reload-release"    # created to let the waiting reload continue

[ -d "$RUN_DIR" ] || mkdir -p "$RUN_DIR"

glog() {
  local line t=$EPOCHREALTIME ts
  # UTC time with milliseconds without a `date` process (printf's strftime, seconds from EPOCHREALTIME).
  TZ=UTC0 printf -v ts '%(%Y-%m-%dT%H:%M:%S)T' "${t%[.,]*}"
  t=${t#*[.,]}
  printf -v line '%s.%sZ [gateway:%s] %s' "$ts" "${t:0:3}" "${GLOG_TAG:-${0##*/}}" "$*"
  printf '%s\n' "$line"
  # Scripts run through `docker exec` (reload, uc-route) also log to the container's log.
  if [ "${GLOG_TO_CONTAINER_LOG:-0}" = 1 ] && [ "$$" != 1 ]; then printf '%s\n' "$line" >/proc/1/fd/1 2>/dev/null || true; fi
}
# Time and waits without a fork (the wait loops run every 20-50 ms in up to 16 gateways on a 2-core
# host: a `date`, `sleep`, `sed` or `cat` per turn is thousands of processes a second, taken from
# the apps and the reloads they wait for). bash 5: EPOCHREALTIME; `read -t` on a pipe we hold both
# ends of never gets data, so it returns after the timeout: a sleep without a process.
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $(( t / 1000 )); }
# tick: NOW_MS = now in ms (no subshell). past <deadline_ms>: true once NOW_MS >= deadline.
tick() { local t=${EPOCHREALTIME/[.,]/}; NOW_MS=$(( t / 1000 )); }
past() { tick; [ "$NOW_MS" -ge "$1" ]; }
# nap <seconds>: sleeps (fractions allowed) in the shell itself.
nap() {
  [ -n "${NAP_FD:-}" ] || exec {NAP_FD}<> <(:)
  read -r -t "$1" -u "$NAP_FD" _ 2>/dev/null || true
}
# fifo_line <fifo> <line>: one line on a FIFO, opened read-write so neither the open nor the write
# blocks; nothing without the FIFO. While nobody else holds the FIFO open the line is dropped.
fifo_line() {
  [ -p "$1" ] || return 0
  local fd
  { exec {fd}<>"$1"; } 2>/dev/null || return 0
  printf '%s\n' "$2" >&"$fd" 2>/dev/null
  exec {fd}>&-
}
# wake_supervisor: ends the supervisor's nap now (it naps on the SUPERVISOR_WAKE FIFO, held open
# read-write; without a supervisor the line stays unread).
wake_supervisor() { fifo_line "$SUPERVISOR_WAKE" wake; }
# post_event <line>: a line for the reload waiting on CANDIDATE_EVENTS (dropped when none waits).
post_event() { fifo_line "$CANDIDATE_EVENTS" "$1"; }
# rm_absent <file>...: rm -f, without the `rm` process when none of the files exists (the usual case).
rm_absent() { local f; for f in "$@"; do [ -e "$f" ] || [ -L "$f" ] || continue; rm -f "$@"; return; done; }
# read_first <var> <file>: the file's first line into var ("" if absent), without a `cat`.
read_first() { local _line=""; { IFS= read -r _line || [ -n "$_line" ]; } 2>/dev/null < "$2"; printf -v "$1" '%s' "$_line"; }

build_server_url() {
  local base="${BUILD_SERVER_URL:-http://demiurge-${ENV_NAME}-build-server:8090}"
  printf '%s/gateway-%s.tar.gz' "${base%/}" "$ENV_NAME"
}

# build_id of an unpacked build directory (or "unknown"): printed, or into variable $2 (no subshell).
read_build_id() {
  local line id=""
  while IFS= read -r line || [ -n "$line" ]; do
    [[ "$line" == build_id=* ]] && { id=${line#build_id=}; break; }
  done 2>/dev/null < "$1/BUILD_INFO.txt"
  if [ -n "${2:-}" ]; then printf -v "$2" '%s' "${id:-unknown}"; else printf '%s' "${id:-unknown}"; fi
}

# The app's control socket for a port (the default app's hand-off, adopt and drain; see gateway-reload).
control_socket() { printf '%s/app-%s.sock' "$RUN_DIR" "$1"; }

# render_upstream <port> <generation>: the content of UPSTREAM_CONF.
render_upstream() {
  printf '# written by gateway-entrypoint / gateway-reload; do not edit\nupstream gateway_app { server 127.0.0.1:%s; }\nmap $host $gateway_app_generation { default "%s %s"; }\n' "$1" "$1" "$2"
}

# True if $1 is a live (non-zombie) process. For pids the supervisor started: right after the fork
# the child is still bash (not yet node), so is_app_pid would call a starting app dead.
alive_pid() {
  local state=""
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
  read -r state < "/proc/$1/stat" 2>/dev/null || [ -n "$state" ] || return 1
  # "<pid> (<comm>) <state> ...": the state follows the last ") ".
  state=${state##*) }; state=${state%% *}
  [ -n "$state" ] && [ "$state" != Z ]
}

# nginx_workers: the pids of stage-2 nginx's workers now (before a reload: the ones it retires).
nginx_workers() { pgrep -P "$(cat /run/nginx.pid 2>/dev/null || echo 0)" 2>/dev/null | tr '\n' ' '; }
# nginx_workers_of <master pid>: the same into NGINX_WORKERS, without a process (the kernel's list of
# the master's children; pgrep as the fallback where /proc has no children file).
nginx_workers_of() {
  NGINX_WORKERS=""
  [[ "${1:-}" =~ ^[1-9][0-9]*$ ]] || return 0
  local f="/proc/$1/task/$1/children" line=""
  if [ -r "$f" ]; then { IFS= read -r line || [ -n "$line" ]; } < "$f" 2>/dev/null; NGINX_WORKERS=$line
  else NGINX_WORKERS=$(pgrep -P "$1" 2>/dev/null | tr '\n' ' '); fi
}

# workers_retired <deadline_ms> <pid>...: waits until every worker given is gone or has closed its
# listening sockets (nginx retitles it "... is shutting down" once it has). After `nginx -s reload`
# the master lets old and new workers accept side by side for ≈100 ms; with one worker (no
# EPOLLEXCLUSIVE then) a new connection may reach either, so an answer from a new worker alone does
# not prove that every new connection gets the new configuration. False at the deadline.
workers_retired() {
  local deadline=$1 w title; shift
  for w in "$@"; do
    while alive_pid "$w"; do
      title=""; IFS= read -r -d '' title < "/proc/$w/cmdline" 2>/dev/null
      [[ "$title" == *"shutting down"* ]] && break
      past "$deadline" && return 1
      nap 0.005
    done
  done
}

# True if $1 is the pid of a live (non-zombie) gateway app process.
is_app_pid() {
  local pid=$1 state cmd
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)
  [ "$state" != Z ] || return 1
  cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)
  case "$cmd" in *"app-gateway/main.js"*|*"default-app/main.js"*) return 0 ;; *) return 1 ;; esac
}

# ENV_NAME_PATTERN of runtime/naming.ts (test/unit/gateway-image-naming.test.ts keeps them equal).
valid_env_name() { [[ "$1" =~ ^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$ ]]; }
valid_port() { [[ "$1" =~ ^[1-9][0-9]{0,4}$ ]] && [ "$1" -le 65535 ]; }
