/** The stack-file reader lives with the laptop-side CLI (tools/lib/stack-yaml.ts); tests use the same one. */
export { parseStackYaml, readStackYaml, type StackFile } from '../../../tools/lib/stack-yaml';
