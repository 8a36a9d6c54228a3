/**
 * The runtime configuration files (config.json + secrets.json) every runtime
 * process in the environment reads. Docs: README, "Built-in API server and the
 * runtime configuration file"; docs/CONTRACTS.md.
 */
export { DEFAULT_RUNTIME_CONFIG_PATH, RUNTIME_CONFIG_ENV, RUNTIME_CONFIG_VERSION } from './types';
export type { RuntimeApiConfig, RuntimeConfig, RuntimeSecrets, RuntimeTlsConfig } from './types';
export { loadRuntimeConfig, parseRuntimeConfig, runtimeConfigPath } from './load';
export type { LoadRuntimeConfigOptions } from './load';
export { allocatorOptionsFromConfig, certificatesFromConfig, databaseUrl } from './allocator-options';
export { parseListen } from './validate';
