# shellcheck shell=bash
# Helpers sourced by launch/tpu_pod.sh and launch/slurm.sh.

die() { echo "error: $*" >&2; exit 2; }

# Shell-quotes one word the way Python's shlex.quote does, so --dry-run lines can be pasted
# into a shell (and split back by tests) and remote commands survive one more shell.
q() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote_words() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(q "$word")"; done
  printf '%s' "$out"
}
