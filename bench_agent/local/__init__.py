"""The technician's side: the local control socket and the CLI over it.

`control` serves the Unix socket (peer credentials, bounded requests),
`control_api` answers its requests, `techcli` is `bench-agent status|wifi|…`,
and `i18n` gives the CLI's words in English and Indonesian.
"""
