module stackspace.dev/session-helper

go 1.25
