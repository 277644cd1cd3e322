# Read by nginx's configure after it wrote objs/Makefile (auto/make).
#
# nginx compiles every source with the same $(CC) $(CFLAGS), and -std=c++17 there would be
# an error on the C files it also builds (objs/ngx_modules.c, the module list of a dynamic
# module), so the standard is set on this module's C++ objects only: a target-specific
# variable per object, at the object paths auto/make gives addon sources.

for channels_src in $CHANNELS_CXX_SRCS
do
    channels_obj=`basename \`dirname $channels_src\``/`basename $channels_src .cpp`
    echo "$NGX_OBJS/addon/$channels_obj.$ngx_objext: CFLAGS += -std=c++17" >> $NGX_MAKEFILE
done
