{{/*
The chart name, at most 63 characters.
*/}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name. Kept to 45 characters so that the longest suffix below
("-controller-config", 18) still gives a name of at most 63 (a label value and DNS label).
*/}}
{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object.
*/}}
{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" . }}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The controller's pod selector (immutable once installed: never add to it).
*/}}
{{- define "portcullis.controller.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "portcullis.controller.labels" -}}
{{ include "portcullis.labels" . }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "portcullis.controller.name" -}}
{{- printf "%s-controller" (include "portcullis.fullname" .) }}
{{- end }}

{{- define "portcullis.controller.serviceAccountName" -}}
{{- default (include "portcullis.controller.name" .) .Values.controller.serviceAccount.name }}
{{- end }}

{{- define "portcullis.controller.configName" -}}
{{- printf "%s-controller-config" (include "portcullis.fullname" .) }}
{{- end }}

{{- define "portcullis.leaseName" -}}
{{- default (include "portcullis.controller.name" .) .Values.controller.leaderElection.leaseName }}
{{- end }}

{{/*
An image reference from a repository, tag and digest: the digest wins over the tag.
Arguments: dict "repository" "tag" "digest".
*/}}
{{- define "portcullis.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository .tag }}
{{- end }}
{{- end }}

{{- define "portcullis.controller.image" -}}
{{- include "portcullis.imageRef" (dict "repository" .Values.image.repository "tag" (default .Chart.AppVersion .Values.image.tag) "digest" .Values.image.digest) }}
{{- end }}

{{- define "portcullis.dataPlane.image" -}}
{{- $d := .Values.dataPlane.image }}
{{- include "portcullis.imageRef" (dict "repository" (default .Values.image.repository $d.repository) "tag" (default (default .Chart.AppVersion .Values.image.tag) $d.tag) "digest" (default .Values.image.digest $d.digest)) }}
{{- end }}

{{/*
Resource requirements with every quantity as a string: Kubernetes accepts `cpu: 2`, but the
controller reads its configuration with the API's string type (Quantity).
*/}}
{{- define "portcullis.quantities" -}}
{{- $out := dict }}
{{- range $section, $values := . }}
{{- $converted := dict }}
{{- range $resource, $quantity := $values }}
{{- $_ := set $converted $resource (toString $quantity) }}
{{- end }}
{{- $_ := set $out $section $converted }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
The controller's configuration file (controller/src/config.rs, which refuses
unknown keys): everything the data-plane pods need, from dataPlane.* values.
*/}}
{{- define "portcullis.controller.config" -}}
{{- $c := .Values.controller }}
{{- $d := .Values.dataPlane }}
{{- $election := dict
      "enabled" $c.leaderElection.enabled
      "leaseName" (include "portcullis.leaseName" .)
      "leaseNamespace" .Release.Namespace
      "leaseDurationSeconds" $c.leaderElection.leaseDurationSeconds
      "renewDeadlineSeconds" $c.leaderElection.renewDeadlineSeconds
      "retryPeriodSeconds" $c.leaderElection.retryPeriodSeconds }}
{{- $service := dict
      "type" $d.service.type
      "annotations" $d.service.annotations
      "labels" $d.service.labels }}
{{- with $d.service.externalTrafficPolicy }}
{{- $_ := set $service "externalTrafficPolicy" . }}
{{- end }}
{{- $plane := dict
      "image" (include "portcullis.dataPlane.image" .)
      "imagePullPolicy" (default .Values.image.pullPolicy $d.image.pullPolicy)
      "imagePullSecrets" .Values.imagePullSecrets
      "replicas" $d.replicas
      "resources" (include "portcullis.quantities" $d.resources | fromYaml)
      "seccompProfile" $d.seccompProfile
      "runAsUser" $d.runAsUser
      "runAsGroup" $d.runAsGroup
      "nodeSelector" $d.nodeSelector
      "tolerations" $d.tolerations
      "hostNetwork" $d.hostNetwork
      "podLabels" $d.podLabels
      "podAnnotations" $d.podAnnotations
      "env" $d.env
      "extraArgs" $d.extraArgs
      "logFormat" $d.logFormat
      "adminPort" $d.adminPort
      "drainTimeoutSeconds" $d.drainTimeoutSeconds
      "terminationGracePeriodSeconds" $d.terminationGracePeriodSeconds
      "service" $service }}
{{- with $d.affinity }}
{{- $_ := set $plane "affinity" . }}
{{- end }}
{{- with $d.securityContext }}
{{- $_ := set $plane "securityContext" . }}
{{- end }}
{{- if $d.podDisruptionBudget.enabled }}
{{- $budget := dict }}
{{- if not (kindIs "invalid" $d.podDisruptionBudget.maxUnavailable) }}
{{- $_ := set $budget "maxUnavailable" $d.podDisruptionBudget.maxUnavailable }}
{{- end }}
{{- if not (kindIs "invalid" $d.podDisruptionBudget.minAvailable) }}
{{- $_ := set $budget "minAvailable" $d.podDisruptionBudget.minAvailable }}
{{- end }}
{{- $_ := set $plane "podDisruptionBudget" $budget }}
{{- end }}
{{- $config := dict
      "controllerName" .Values.controllerName
      "adminAddress" (printf "0.0.0.0:%d" (int $c.adminPort))
      "leaderElection" $election
      "dataPlane" $plane }}
{{- toYaml $config }}
{{- end }}

{{/*
"true" when the GatewayClass can be rendered: the CRDs are the user's (crds.install off: a
missing CRD is then a clear install error), or the cluster already serves the kind.
*/}}
{{- define "portcullis.gatewayClassServed" -}}
{{- if or (not .Values.crds.install) (.Capabilities.APIVersions.Has "gateway.networking.k8s.io/v1/GatewayClass") }}true{{ end }}
{{- end }}
