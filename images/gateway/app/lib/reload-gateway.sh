#!/bin/bash
# Hot reload (fetch the current build and restart the app): the image's gateway-reload.
exec /usr/local/bin/gateway-reload "$@"
