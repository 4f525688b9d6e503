{{/*
Rules across values that values.schema.json cannot express; rendered from the controller
Deployment so that `helm template`/`install` stops with a message instead of a crash-looping
controller.
*/}}
{{- define "portcullis.validate" -}}
{{- $c := .Values.controller }}
{{- if and (not $c.leaderElection.enabled) (gt (int $c.replicas) 1) }}
{{- fail (printf "controller.leaderElection.enabled=false needs controller.replicas <= 1 (got %d): without the Lease every replica would write" (int $c.replicas)) }}
{{- end }}
{{- $budget := .Values.dataPlane.podDisruptionBudget }}
{{- if and $budget.enabled (eq (kindIs "invalid" $budget.maxUnavailable) (kindIs "invalid" $budget.minAvailable)) }}
{{- fail "dataPlane.podDisruptionBudget needs exactly one of maxUnavailable and minAvailable (set the other to null)" }}
{{- end }}
{{- $e := $c.leaderElection }}
{{- if not (and (lt (int $e.retryPeriodSeconds) (int $e.renewDeadlineSeconds)) (lt (int $e.renewDeadlineSeconds) (int $e.leaseDurationSeconds))) }}
{{- fail (printf "controller.leaderElection needs retryPeriodSeconds (%d) < renewDeadlineSeconds (%d) < leaseDurationSeconds (%d): a leader must give up before others may take over" (int $e.retryPeriodSeconds) (int $e.renewDeadlineSeconds) (int $e.leaseDurationSeconds)) }}
{{- end }}
{{- end }}
