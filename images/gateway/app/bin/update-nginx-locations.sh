#!/bin/bash
# User-container routes in the stage-2 nginx; see gateway-uc-route in the image.
#   update-nginx-locations.sh add <uuid> <host>:<port> | remove <uuid> | list
exec /usr/local/bin/gateway-uc-route "$@"
