#!/bin/bash
# Fetch and unpack the current build without restarting the app: the image's gateway-fetch-build.
exec /usr/local/bin/gateway-fetch-build "$@"
