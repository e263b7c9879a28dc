"""The Kopf operator: schedules LoRAJobs onto runtime pods and is the only writer of their status."""
