#!/bin/sh
# Configures the nginx tree in the current directory for building this module only.
# $1 = module dir, $2 = cc opt, $3 = ld opt.
# Debian's nginx-dev tree carries conf_flags (the flags Debian's nginx was built with);
# any other tree is configured with --with-compat so the module loads into that nginx.
set -e
module_dir=$1 cc_opt=$2 ld_opt=$3
if [ -f conf_flags ]; then
    flags=$(bash -c '. ./conf_flags; printf "%s\n" "${NGX_CONF_FLAGS[@]}"')
    # shellcheck disable=SC2086
    IFS='
'
    set -- $flags
    unset IFS
    ./configure "$@" --with-cc-opt="$cc_opt" --with-ld-opt="$ld_opt" \
        --add-dynamic-module="$module_dir"
else
    ./configure --with-compat --with-http_ssl_module --with-http_v2_module \
        --with-http_auth_request_module --with-threads \
        --with-cc-opt="$cc_opt" --with-ld-opt="$ld_opt" --add-dynamic-module="$module_dir"
fi
