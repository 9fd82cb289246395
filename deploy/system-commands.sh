# shellcheck shell=bash
# Sourced by install.sh and uninstall.sh: the one place that decides whether a
# system command runs or is only recorded, so that with --root DIR the log is
# exactly the list of commands a real run would run. The log is rewritten on
# every run: a re-run records the same list, and changes nothing.
#
#   start_command_log "$root" /var/log/NAME.log   # after parsing --root
#   sys "command …"                               # run, or record under $root

start_command_log() {
    command_root=$1
    command_log=$2
    if [ -n "$command_root" ]; then
        mkdir -p "$command_root/var/log"
        : >"$command_root$command_log"
    fi
}

sys() {
    if [ -n "$command_root" ]; then
        printf '%s\n' "$*" >>"$command_root$command_log"
    else
        bash -c "$*"
    fi
}
