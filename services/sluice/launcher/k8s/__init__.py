"""Kubernetes manifests generated from the suite's settings (`sluice k8s render`).

values.py: what an operator chooses (image, sizes, replicas, secrets, the canary) and
the staging/production overlays; suite.py: the suite's settings as the cluster runs them;
workloads.py: Deployments, Services, the Valkey StatefulSet; policies.py:
NetworkPolicies, PodDisruptionBudgets, HorizontalPodAutoscalers; rollout.py: the Argo
Rollouts canary of the router; pod.py: the suite as one Pod for `podman kube play`;
render.py: one directory of YAML per environment.
docs/kubernetes.md explains the result.
"""
