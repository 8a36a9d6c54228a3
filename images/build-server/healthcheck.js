'use strict';
// Healthy when the server answers HTTP at all ("/" is always a 404 by design).
const req = require('http').request(
  { host: '127.0.0.1', port: Number(process.env.PORT || 8090), method: 'HEAD', path: '/', timeout: 2000 },
  (res) => process.exit(res.statusCode === 404 ? 0 : 1),
);
req.on('error', () => process.exit(1));
req.on('timeout', () => { req.destroy(); process.exit(1); });
req.end();
