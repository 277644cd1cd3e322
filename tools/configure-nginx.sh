#!/bin/sh
# Configures the nginx source tree in the current directory with this module.
#   configure-nginx.sh MODULE_DIR CC_OPT LD_OPT            for `make modules` (the module only)
#   configure-nginx.sh --binary MODULE_DIR CC_OPT LD_OPT   for `make`: an nginx binary too
#
# Module only: Debian's nginx-dev tree carries conf_flags (the flags Debian's nginx was
# built with), so the module loads into /usr/sbin/nginx; any other tree is configured
# --with-compat, so the module loads into an nginx of that version built --with-compat.
#
# --binary (an nginx release tarball, `make NGINX_TARBALL=...`): the http modules of
# Debian's nginx that the tests and conf-examples use, the same way on every version, so
# the suite runs on a stock nginx of that version as it runs on Debian's.
set -e
binary=no
if [ "$1" = --binary ]; then
    binary=yes
    shift
fi
module_dir=$1 cc_opt=$2 ld_opt=$3

if [ $binary = yes ]; then
    ./configure --with-compat --with-debug --with-threads --with-pcre-jit \
        --with-http_ssl_module --with-http_v2_module --with-http_realip_module \
        --with-http_auth_request_module --with-http_sub_module --with-http_addition_module \
        --with-http_stub_status_module --with-http_gunzip_module --with-http_gzip_static_module \
        --with-http_slice_module --with-http_dav_module --with-http_secure_link_module \
        --with-cc-opt="$cc_opt" --with-ld-opt="$ld_opt" --add-dynamic-module="$module_dir"
elif [ -f conf_flags ]; then
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
