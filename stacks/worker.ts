import { IgnoreMode, RemovalPolicy } from 'aws-cdk-lib';
import type { IVpc } from 'aws-cdk-lib/aws-ec2';
import { Platform } from 'aws-cdk-lib/aws-ecr-assets';
import {
  Cluster,
  ContainerImage,
  ContainerInsights,
  CpuArchitecture,
  FargateTaskDefinition,
  LogDrivers,
  OperatingSystemFamily,
} from 'aws-cdk-lib/aws-ecs';
import { LogGroup, RetentionDays } from 'aws-cdk-lib/aws-logs';
import type { Construct } from 'constructs';
import { useProject } from 'sst/project.js';

/** The container the state machine's RunTask overrides (`WorkerContainerName`). */
export const WORKER_CONTAINER_NAME = 'worker';

/**
 * What never goes into the image's build context, on top of the repository's .dockerignore (which
 * CDK reads too): without these, every synth would copy and hash node_modules and earlier outputs.
 */
export const WORKER_CONTEXT_EXCLUDES = [
  '**/node_modules',
  '.git',
  '.sst',
  'cdk.out',
  '.synth',
  '.pgferry',
  'coverage',
  'test',
  'bench',
];

export interface Worker {
  cluster: Cluster;
  taskDefinition: FargateTaskDefinition;
}

/**
 * The Fargate worker for the long tasks (schema, bulk load, verify): one process holds the exported
 * snapshot's session for the whole copy, which no Lambda invocation can. x86_64, so that the image
 * builds on any deploying machine without emulation.
 */
export function worker(scope: Construct, vpc: IVpc, environment: Record<string, string>): Worker {
  const cluster = new Cluster(scope, 'WorkerCluster', { vpc, containerInsightsV2: ContainerInsights.ENABLED });
  const taskDefinition = new FargateTaskDefinition(scope, 'WorkerTask', {
    cpu: 2048,
    memoryLimitMiB: 8192,
    runtimePlatform: {
      cpuArchitecture: CpuArchitecture.X86_64,
      operatingSystemFamily: OperatingSystemFamily.LINUX,
    },
  });
  const logGroup = new LogGroup(scope, 'WorkerLogs', {
    retention: RetentionDays.THREE_MONTHS,
    removalPolicy: RemovalPolicy.DESTROY,
  });
  taskDefinition.addContainer(WORKER_CONTAINER_NAME, {
    // The repository root (where sst.config.ts is) is the build context: the image holds packages/*.
    image: ContainerImage.fromAsset(useProject().paths.root, {
      file: 'Dockerfile',
      platform: Platform.LINUX_AMD64,
      exclude: WORKER_CONTEXT_EXCLUDES,
      ignoreMode: IgnoreMode.DOCKER,
    }),
    environment,
    logging: LogDrivers.awsLogs({ logGroup, streamPrefix: 'worker' }),
  });
  return { cluster, taskDefinition };
}
