#!/bin/sh
# refresh-secrets.sh: fetch the calling user's secrets from cron and log one line about it.
#
# Usage: refresh-secrets.sh [op-secret-manager options]      e.g. refresh-secrets.sh --tags reports
#
# Runs `op-secret-manager --serialize --json [options]` (a fetch) as the user whose crontab calls
# it (see crontab beside this file). --serialize makes it wait for another run of the same user
# (a unit's ExecStartPre=, an overlapping cron job) instead of racing it. The result goes to
# syslog/the journal with the tag op-secret-manager (`journalctl -t op-secret-manager`):
#
#   fetch ok: 2 written, 0 unchanged
#   fetch failed: exit 69 (1Password unavailable or a reference did not resolve): 1 secret ...
#
# The tool's own warnings and errors still go to stderr, which cron mails to the user.
# On exit 75 (temporary: lock timeout, 1Password rate limit) it waits RETRY_DELAY seconds and
# tries once more. Exit status: the tool's own, from the last attempt.
#
# Environment (all optional):
#   OP_SECRET_MANAGER  the command to run (default: op-secret-manager, from PATH)
#   LOGGER             the logger(1) command (default: logger); empty: log to stderr only.
#                      When it is missing or fails, the line goes to stderr instead.
#   RETRY_DELAY        seconds before the retry after exit 75 (default: 60)

set -u

osm=${OP_SECRET_MANAGER:-op-secret-manager}
logger_cmd=${LOGGER-logger}
retry_delay=${RETRY_DELAY:-60}
tag=op-secret-manager

# log PRIORITY MESSAGE: one line to syslog, or to stderr when logger is unavailable.
log() {
  if [ -n "$logger_cmd" ] && "$logger_cmd" -t "$tag" -p "user.$1" -- "$2" 2>/dev/null; then
    return 0
  fi
  printf '%s: %s\n' "$tag" "$2" >&2
}

# meaning STATUS: the documented exit codes (README.md, "Exit codes").
meaning() {
  case $1 in
    0) echo "ok" ;;
    64) echo "usage error" ;;
    65) echo "mapfile error" ;;
    66) echo "credential file or mapfile missing" ;;
    69) echo "1Password unavailable or a reference did not resolve" ;;
    73) echo "cannot write a secret file" ;;
    75) echo "temporary failure" ;;
    77) echo "permission denied" ;;
    78) echo "configuration error" ;;
    126 | 127) echo "cannot run $osm" ;;
    130 | 143) echo "interrupted" ;;
    *) echo "unexpected exit status" ;;
  esac
}

# run [OPTIONS]: one fetch; sets $out (the JSON report) and $status (the exit status).
run() {
  out=$("$osm" --serialize --json "$@")
  status=$?
}

# count STATUS: how many files of the report have this status ("written", "unchanged").
count() {
  printf '%s\n' "$out" | tr ',' '\n' | grep -c "\"status\": *\"$1\""
}

# field NAME: the first string value of NAME in the report (escaped quotes shown as ').
field() {
  printf '%s\n' "$out" | sed -n -e 's/\\"/'"'"'/g' -e "s/.*\"$1\": *\\[* *\"\\([^\"]*\\)\".*/\\1/p" | head -n 1
}

run "$@"
retried=""
if [ "$status" -eq 75 ]; then
  message=$(field message)
  log warning "fetch: exit 75 ($(meaning 75))${message:+: $message}; retrying in ${retry_delay}s"
  sleep "$retry_delay"
  run "$@"
  retried=" after a retry"
fi

if [ "$status" -eq 0 ]; then
  warning=$(field warnings)
  log info "fetch ok${retried}: $(count written) written, $(count unchanged) unchanged${warning:+; warning: $warning}"
else
  message=$(field message)
  log err "fetch failed${retried}: exit $status ($(meaning "$status"))${message:+: $message}"
fi
exit "$status"
