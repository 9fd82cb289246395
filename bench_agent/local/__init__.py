"""The technician's side: the local control socket and the CLI over it.

`control` is the protocol, its errors and the client; `control_server` serves
the Unix socket (peer credentials, bounded requests) and `control_service`
keeps it served; `control_api` answers its requests; `techcli` is
`bench-agent status|wifi|…`, `render` turns answers into text, and `i18n`
gives the words in English and Indonesian.
"""
