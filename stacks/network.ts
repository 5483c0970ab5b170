import { Fn } from 'aws-cdk-lib';
import { type ISecurityGroup, type ISubnet, type IVpc, SecurityGroup, Subnet, Vpc } from 'aws-cdk-lib/aws-ec2';
import type { Construct } from 'constructs';
import type { FunctionProps } from 'sst/constructs';
import type { DeployConfig } from './config';

export interface Network {
  vpc: IVpc;
  subnets: ISubnet[];
  securityGroups: ISecurityGroup[];
}

/**
 * The customer's network, imported by id: nothing is looked up at synth time (a lookup needs AWS
 * credentials and would pin the template to one account), and nothing is created or changed.
 */
export function importNetwork(scope: Construct, config: DeployConfig): Network {
  const known = imported.get(scope);
  if (known) return known;
  // The zones are the region's (a deploy-time list): every consumer selects the configured subnets
  // explicitly, never by zone.
  const vpc = Vpc.fromVpcAttributes(scope, 'Vpc', { vpcId: config.vpcId, availabilityZones: Fn.getAzs() });
  const subnets = config.subnetIds.map((id) => Subnet.fromSubnetId(scope, `Subnet-${id}`, id));
  const securityGroups = config.securityGroupIds.map((id) =>
    // mutable: false, so that no grant of the stack edits a security group it does not own.
    SecurityGroup.fromSecurityGroupId(scope, `SecurityGroup-${id}`, id, { mutable: false }),
  );
  const network = { vpc, subnets, securityGroups };
  imported.set(scope, network);
  return network;
}

/** One import per stack: the functions' defaults and the worker share it. */
const imported = new WeakMap<Construct, Network>();

/** The default props of every Lambda function of the app (sst.config.ts): Node 22 on Graviton, in the configured subnets. */
export function functionDefaults(scope: Construct, config: DeployConfig): FunctionProps {
  const { vpc, subnets, securityGroups } = importNetwork(scope, config);
  return {
    runtime: 'nodejs22.x',
    architecture: 'arm_64',
    tracing: 'active',
    vpc,
    vpcSubnets: { subnets },
    securityGroups,
  };
}
