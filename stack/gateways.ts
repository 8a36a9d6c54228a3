/**
 * Pure planning of the gateway pool from the validated stack config: which
 * gateway index lives on which Docker host, its name, ports and the address
 * the stage-1 nginx reaches it at. Shared by index.ts (resources) and the
 * `gatewayInventory` stack output, so the two cannot disagree.
 */
import type { GatewaySpec } from '../runtime/inventory';
import { gatewayHttpPort, gatewayName, gatewayVpnPort } from '../runtime/naming';
import type { GatewayHostConfig, StackConfig } from './config';

export interface GatewayPlanEntry {
  index: number;
  /** Container name and Pulumi resource name: `gw-pool-<env>-<n>`. */
  name: string;
  httpPort: number;
  vpnPort: number;
  /** `GatewayHostConfig.name` of the Docker host it runs on. */
  hostName: string;
  /**
   * Address the stage-1 nginx uses: the container name on the main host (Docker
   * DNS on the environment network), the host's IP on a remote host.
   */
  inventoryHost: string;
}

export function planGateways(
  cfg: Pick<StackConfig, 'envName' | 'gatewayHttpPortBase' | 'gatewayVpnPortBase'> & { gatewayHosts: readonly GatewayHostConfig[] },
): GatewayPlanEntry[] {
  const entries: GatewayPlanEntry[] = [];
  for (const host of cfg.gatewayHosts) {
    for (let index = host.firstIndex; index < host.firstIndex + host.poolSize; index++) {
      const name = gatewayName(cfg.envName, index);
      if (host.kind === 'ssh' && host.ip === undefined) throw new Error(`gateway host ${host.name} has no ip`);
      entries.push({
        index,
        name,
        httpPort: gatewayHttpPort(cfg.gatewayHttpPortBase, index),
        vpnPort: gatewayVpnPort(cfg.gatewayVpnPortBase, index),
        hostName: host.name,
        inventoryHost: host.kind === 'main' ? name : (host.ip as string),
      });
    }
  }
  return entries.sort((a, b) => a.index - b.index);
}

/** The `gatewayInventory` stack output: exactly `GatewaySpec[]`, ordered by index. */
export function gatewayInventory(plan: readonly GatewayPlanEntry[]): GatewaySpec[] {
  return plan.map((g) => ({ name: g.name, host: g.inventoryHost, httpPort: g.httpPort, vpnPort: g.vpnPort }));
}
