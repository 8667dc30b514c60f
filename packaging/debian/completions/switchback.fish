# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_switchback_global_optspecs
    string join \n socket= c/config= h/help V/version
end

function __fish_switchback_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_switchback_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_switchback_using_subcommand
    set -l cmd (__fish_switchback_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c switchback -n "__fish_switchback_needs_command" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_needs_command" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_needs_command" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_needs_command" -s V -l version -d 'Print version'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "run" -d 'Run the proxy'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "demo" -d 'Run the proxy in front of two built-in demo backends, blue and green'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "check" -d 'Check a config file and exit: 0 when it is valid, 2 with every problem when not'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL (the Debian package installs them)'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "manpage" -d 'Print the man page, switchback(1), as roff'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "init" -d 'Write a starter config for one app: its host names, its backends as the blue pool, an empty green pool for the next deploy, and TLS by ACME. The config is checked first; it is printed, or written to --output, never over an existing file'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "import" -d 'Translate another proxy\'s config into switchback\'s: the config on stdout, every directive left behind on stderr with file:line and why'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "status" -d 'Show every service, its pools, each backend\'s health, the active pool and the split'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "rollback" -d 'Undo the last change: abort a running rollout, end a canary, or go back to the pool that was active before the last switch'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "certs" -d 'List the TLS certificates (names, issuer, expiry, next renewal, last error), or renew one'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "reload-certs" -d 'Load every certificate file pair again (after replacing the files)'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "upgrade" -d 'Start a new process from the binary at the path this one was started from (after `install new-switchback /usr/local/bin/switchback`, say), hand it the listening sockets with no refused connection, and drain and stop the old one. Exits 0 once the new process serves; 1, with the old one still serving, if it cannot start'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "reload" -d 'Read the config file again and apply it with no restart (SIGHUP does the same). A file with any problem changes nothing: every problem is shown as file:line: key'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "canary" -d 'Send PERCENT of a service\'s clients (0 to 100, one decimal) to POOL, the rest to the active pool; `canary POOL 0` ends it. Each client keeps its pool while the split holds'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "deploy" -d 'Deploy BACKEND[,BACKEND…] in one command: set them on the pool that is not active (--pool when the service has more than two), wait until they pass their health checks (else nothing is switched: exit 1, saying which backend failed and how), switch to it (or with --rollout roll it out: exit 3 if it rolls back), and wait for the old pool to drain. The deploy runs in the proxy: stopping this command does not stop it (`--watch` follows it again)'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "rollout" -d 'Move a canary of POOL through --steps, judging it after each --interval; promote it at the end (exit 0) or roll back at the first breach (exit 3). The rollout runs in the proxy: stopping this command does not stop it (`--watch` follows it again, `--abort` stops it and rolls back)'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "switch" -d 'Send all new requests of a service to POOL; requests in flight finish where they are'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "pool" -d 'Change the backends of a pool'
complete -c switchback -n "__fish_switchback_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c switchback -n "__fish_switchback_using_subcommand run" -l log-format -d 'Log format of the proxy\'s own logs' -r -f -a "text\t''
json\t''"
complete -c switchback -n "__fish_switchback_using_subcommand run" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand run" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand run" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand demo" -l port -d 'Port of the proxy\'s HTTP listener on 127.0.0.1' -r
complete -c switchback -n "__fish_switchback_using_subcommand demo" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand demo" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand demo" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand check" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand check" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand check" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand completions" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand completions" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand completions" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand manpage" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand manpage" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand manpage" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand init" -l host -d 'A host name the app answers for (repeat for more)' -r
complete -c switchback -n "__fish_switchback_using_subcommand init" -l backend -d 'A backend of the blue pool, which serves first: `127.0.0.1:8000` or `name:port` (repeat for more)' -r
complete -c switchback -n "__fish_switchback_using_subcommand init" -l backend-green -d 'A backend of the green pool (repeat for more); empty by default, for `pool set`' -r
complete -c switchback -n "__fish_switchback_using_subcommand init" -l acme-email -d 'The contact address of the ACME account' -r
complete -c switchback -n "__fish_switchback_using_subcommand init" -l http -d 'The plain-HTTP listen address' -r
complete -c switchback -n "__fish_switchback_using_subcommand init" -l https -d 'The HTTPS listen address' -r
complete -c switchback -n "__fish_switchback_using_subcommand init" -l service -d 'The service\'s name' -r
complete -c switchback -n "__fish_switchback_using_subcommand init" -l state-dir -d 'The state directory' -r
complete -c switchback -n "__fish_switchback_using_subcommand init" -s o -l output -d 'Write the config to FILE (which must not exist) instead of printing it' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand init" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand init" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand init" -l no-tls -d 'Plain HTTP only: no certificates, no HTTPS listener'
complete -c switchback -n "__fish_switchback_using_subcommand init" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand import; and not __fish_seen_subcommand_from nginx help" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand import; and not __fish_seen_subcommand_from nginx help" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand import; and not __fish_seen_subcommand_from nginx help" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand import; and not __fish_seen_subcommand_from nginx help" -f -a "nginx" -d 'An nginx config (its includes followed): upstreams, servers, locations with proxy_pass, headers, body limits, gzip, timeouts, TLS and the HTTPS redirect'
complete -c switchback -n "__fish_switchback_using_subcommand import; and not __fish_seen_subcommand_from nginx help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c switchback -n "__fish_switchback_using_subcommand import; and __fish_seen_subcommand_from nginx" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand import; and __fish_seen_subcommand_from nginx" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand import; and __fish_seen_subcommand_from nginx" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand import; and __fish_seen_subcommand_from help" -f -a "nginx" -d 'An nginx config (its includes followed): upstreams, servers, locations with proxy_pass, headers, body limits, gzip, timeouts, TLS and the HTTPS redirect'
complete -c switchback -n "__fish_switchback_using_subcommand import; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c switchback -n "__fish_switchback_using_subcommand status" -s s -l service -d 'The service (may be left out when there is only one)' -r
complete -c switchback -n "__fish_switchback_using_subcommand status" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand status" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand status" -l json
complete -c switchback -n "__fish_switchback_using_subcommand status" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand rollback" -s s -l service -d 'The service (may be left out when there is only one)' -r
complete -c switchback -n "__fish_switchback_using_subcommand rollback" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand rollback" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand rollback" -l force -d 'Roll back even when that pool has no healthy backend'
complete -c switchback -n "__fish_switchback_using_subcommand rollback" -l json
complete -c switchback -n "__fish_switchback_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand certs; and not __fish_seen_subcommand_from renew help" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand certs; and not __fish_seen_subcommand_from renew help" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand certs; and not __fish_seen_subcommand_from renew help" -l json
complete -c switchback -n "__fish_switchback_using_subcommand certs; and not __fish_seen_subcommand_from renew help" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand certs; and not __fish_seen_subcommand_from renew help" -f -a "renew" -d 'Order a new certificate for an ACME host now; returns once it is served or failed'
complete -c switchback -n "__fish_switchback_using_subcommand certs; and not __fish_seen_subcommand_from renew help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c switchback -n "__fish_switchback_using_subcommand certs; and __fish_seen_subcommand_from renew" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand certs; and __fish_seen_subcommand_from renew" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand certs; and __fish_seen_subcommand_from renew" -l json
complete -c switchback -n "__fish_switchback_using_subcommand certs; and __fish_seen_subcommand_from renew" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand certs; and __fish_seen_subcommand_from help" -f -a "renew" -d 'Order a new certificate for an ACME host now; returns once it is served or failed'
complete -c switchback -n "__fish_switchback_using_subcommand certs; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c switchback -n "__fish_switchback_using_subcommand reload-certs" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand reload-certs" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand reload-certs" -l json
complete -c switchback -n "__fish_switchback_using_subcommand reload-certs" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand upgrade" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand upgrade" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand upgrade" -l json
complete -c switchback -n "__fish_switchback_using_subcommand upgrade" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand reload" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand reload" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand reload" -l force -d 'Apply it even when it removes a pool in use (the active pool, a canary, a rollout\'s): traffic goes to the file\'s active pool, canaries and rollouts end'
complete -c switchback -n "__fish_switchback_using_subcommand reload" -l json
complete -c switchback -n "__fish_switchback_using_subcommand reload" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand canary" -s s -l service -d 'The service (may be left out when there is only one)' -r
complete -c switchback -n "__fish_switchback_using_subcommand canary" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand canary" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand canary" -l force -d 'Even when POOL has no healthy backend'
complete -c switchback -n "__fish_switchback_using_subcommand canary" -l json
complete -c switchback -n "__fish_switchback_using_subcommand canary" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -s s -l service -d 'The service (may be left out when there is only one)' -r
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l pool -d 'The pool to deploy to (required when the service has more than two)' -r
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l steps -d 'With --rollout: percentages of clients on the pool, increasing' -r
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l interval -d 'With --rollout: how long each step is watched before the next' -r
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l max-error-rate -d 'With --rollout: percent of 5xx answers (or failed connections) that rolls back' -r
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l max-p95 -d 'With --rollout: p95 latency in a step that rolls back' -r
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l min-requests -d 'With --rollout: canary requests a step needs before it is judged' -r
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l health-timeout -d 'How long the new backends have to pass their health checks' -r
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l drain-timeout -d 'How long the old pool may take to drain (default: the service\'s drain_timeout)' -r
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l rollout -d 'Roll the pool out as `rollout` does, with its options, instead of switching'
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l watch -d 'Follow the running deploy (or show how the last one ended)'
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -l json -d 'One JSON object per line: each event, then the end'
complete -c switchback -n "__fish_switchback_using_subcommand deploy" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -s s -l service -d 'The service (may be left out when there is only one)' -r
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l steps -d 'Percentages of clients on POOL, increasing [proxy\'s default: 5,25,50,100]' -r
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l interval -d 'How long each step is watched before the next [proxy\'s default: 30s]' -r
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l max-error-rate -d 'Percent of 5xx answers (or failed connections) in a step that rolls back [proxy\'s default: 5]' -r
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l max-p95 -d 'p95 latency in a step that rolls back [proxy\'s default: 2s]' -r
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l min-requests -d 'Canary requests a step needs before it is judged [proxy\'s default: 50]' -r
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l force -d 'Even when POOL has no healthy backend'
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l watch -d 'Follow the running rollout (or show how the last one ended)'
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l abort -d 'Stop the running rollout and send every client back to the stable pool'
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -l json -d 'One JSON object per line: each event, then the end'
complete -c switchback -n "__fish_switchback_using_subcommand rollout" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand switch" -s s -l service -d 'The service (may be left out when there is only one)' -r
complete -c switchback -n "__fish_switchback_using_subcommand switch" -l drain-timeout -d 'How long --wait-drain waits [proxy\'s default: 30s]' -r
complete -c switchback -n "__fish_switchback_using_subcommand switch" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand switch" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand switch" -l force -d 'Switch even when POOL has no healthy backend'
complete -c switchback -n "__fish_switchback_using_subcommand switch" -l wait-drain -d 'Return only once nothing is in flight to the old pool (or --drain-timeout passed)'
complete -c switchback -n "__fish_switchback_using_subcommand switch" -l json
complete -c switchback -n "__fish_switchback_using_subcommand switch" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand pool; and not __fish_seen_subcommand_from set help" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand pool; and not __fish_seen_subcommand_from set help" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand pool; and not __fish_seen_subcommand_from set help" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand pool; and not __fish_seen_subcommand_from set help" -f -a "set" -d 'Replace a pool\'s backends, like `pool set green 127.0.0.1:9012,127.0.0.1:9013` or `pool set green api-green:8000` (a host name: every address it resolves to is a backend)'
complete -c switchback -n "__fish_switchback_using_subcommand pool; and not __fish_seen_subcommand_from set help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c switchback -n "__fish_switchback_using_subcommand pool; and __fish_seen_subcommand_from set" -s s -l service -d 'The service (may be left out when there is only one)' -r
complete -c switchback -n "__fish_switchback_using_subcommand pool; and __fish_seen_subcommand_from set" -l timeout -d 'How long --wait may take before giving up and changing nothing [proxy\'s default: 30s]' -r
complete -c switchback -n "__fish_switchback_using_subcommand pool; and __fish_seen_subcommand_from set" -l socket -d 'The control socket to talk to (default: the [control] socket of --config)' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand pool; and __fish_seen_subcommand_from set" -s c -l config -d 'The config file' -r -F
complete -c switchback -n "__fish_switchback_using_subcommand pool; and __fish_seen_subcommand_from set" -l wait -d 'Apply only once every new backend passes its health check'
complete -c switchback -n "__fish_switchback_using_subcommand pool; and __fish_seen_subcommand_from set" -l json
complete -c switchback -n "__fish_switchback_using_subcommand pool; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help'
complete -c switchback -n "__fish_switchback_using_subcommand pool; and __fish_seen_subcommand_from help" -f -a "set" -d 'Replace a pool\'s backends, like `pool set green 127.0.0.1:9012,127.0.0.1:9013` or `pool set green api-green:8000` (a host name: every address it resolves to is a backend)'
complete -c switchback -n "__fish_switchback_using_subcommand pool; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "run" -d 'Run the proxy'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "demo" -d 'Run the proxy in front of two built-in demo backends, blue and green'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "check" -d 'Check a config file and exit: 0 when it is valid, 2 with every problem when not'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "completions" -d 'Print the shell completion script for SHELL (the Debian package installs them)'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "manpage" -d 'Print the man page, switchback(1), as roff'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "init" -d 'Write a starter config for one app: its host names, its backends as the blue pool, an empty green pool for the next deploy, and TLS by ACME. The config is checked first; it is printed, or written to --output, never over an existing file'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "import" -d 'Translate another proxy\'s config into switchback\'s: the config on stdout, every directive left behind on stderr with file:line and why'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "status" -d 'Show every service, its pools, each backend\'s health, the active pool and the split'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "rollback" -d 'Undo the last change: abort a running rollout, end a canary, or go back to the pool that was active before the last switch'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "certs" -d 'List the TLS certificates (names, issuer, expiry, next renewal, last error), or renew one'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "reload-certs" -d 'Load every certificate file pair again (after replacing the files)'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "upgrade" -d 'Start a new process from the binary at the path this one was started from (after `install new-switchback /usr/local/bin/switchback`, say), hand it the listening sockets with no refused connection, and drain and stop the old one. Exits 0 once the new process serves; 1, with the old one still serving, if it cannot start'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "reload" -d 'Read the config file again and apply it with no restart (SIGHUP does the same). A file with any problem changes nothing: every problem is shown as file:line: key'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "canary" -d 'Send PERCENT of a service\'s clients (0 to 100, one decimal) to POOL, the rest to the active pool; `canary POOL 0` ends it. Each client keeps its pool while the split holds'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "deploy" -d 'Deploy BACKEND[,BACKEND…] in one command: set them on the pool that is not active (--pool when the service has more than two), wait until they pass their health checks (else nothing is switched: exit 1, saying which backend failed and how), switch to it (or with --rollout roll it out: exit 3 if it rolls back), and wait for the old pool to drain. The deploy runs in the proxy: stopping this command does not stop it (`--watch` follows it again)'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "rollout" -d 'Move a canary of POOL through --steps, judging it after each --interval; promote it at the end (exit 0) or roll back at the first breach (exit 3). The rollout runs in the proxy: stopping this command does not stop it (`--watch` follows it again, `--abort` stops it and rolls back)'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "switch" -d 'Send all new requests of a service to POOL; requests in flight finish where they are'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "pool" -d 'Change the backends of a pool'
complete -c switchback -n "__fish_switchback_using_subcommand help; and not __fish_seen_subcommand_from run demo check completions manpage init import status rollback certs reload-certs upgrade reload canary deploy rollout switch pool help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c switchback -n "__fish_switchback_using_subcommand help; and __fish_seen_subcommand_from import" -f -a "nginx" -d 'An nginx config (its includes followed): upstreams, servers, locations with proxy_pass, headers, body limits, gzip, timeouts, TLS and the HTTPS redirect'
complete -c switchback -n "__fish_switchback_using_subcommand help; and __fish_seen_subcommand_from certs" -f -a "renew" -d 'Order a new certificate for an ACME host now; returns once it is served or failed'
complete -c switchback -n "__fish_switchback_using_subcommand help; and __fish_seen_subcommand_from pool" -f -a "set" -d 'Replace a pool\'s backends, like `pool set green 127.0.0.1:9012,127.0.0.1:9013` or `pool set green api-green:8000` (a host name: every address it resolves to is a backend)'
