{{/*
Names, labels and shared pod pieces. Every template includes these instead of repeating them.
*/}}

{{- define "loraplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-scoped base name, short enough that "<fullname>-runtime-<runtime name>" fits 63. */}}
{{- define "loraplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains (include "loraplane.name" .) .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "loraplane.name" .) | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "loraplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loraplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "loraplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "loraplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: dict "ctx" $ "component" "gateway". */}}
{{- define "loraplane.componentSelector" -}}
{{ include "loraplane.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
loraplane.dev/component: {{ .component }}
{{- end -}}

{{- define "loraplane.componentLabels" -}}
{{ include "loraplane.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
loraplane.dev/component: {{ .component }}
{{- end -}}

{{/* A base model name as a label value: '/' and other characters labels refuse become '.', at most 63. */}}
{{- define "loraplane.modelLabel" -}}
{{- regexReplaceAll "[^A-Za-z0-9_.-]" . "." | trunc 63 | trimAll "._-" -}}
{{- end -}}

{{- define "loraplane.image" -}}
{{- $img := .image | default dict -}}
{{- $repo := $img.repository | default .ctx.Values.image.repository -}}
{{- $tag := $img.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "loraplane.serviceAccountName" -}}
{{- printf "%s-%s" (include "loraplane.fullname" .ctx) .component -}}
{{- end -}}

{{/* The artifact store URL every component shares. */}}
{{- define "loraplane.storeUrl" -}}
{{- if eq .Values.store.type "pvc" -}}
file://{{ .Values.store.pvc.mountPath }}
{{- else -}}
{{- .Values.store.s3.url -}}
{{- end -}}
{{- end -}}

{{- define "loraplane.storePvcName" -}}
{{- .Values.store.pvc.existingClaim | default (printf "%s-store" (include "loraplane.fullname" .)) -}}
{{- end -}}

{{- define "loraplane.apiKeysSecretName" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "loraplane.fullname" .)) -}}
{{- end -}}

{{/* Environment for the artifact store, shared by gateway, operator and runtimes. */}}
{{- define "loraplane.storeEnv" -}}
- name: LORAPLANE_STORE__URL
  value: {{ include "loraplane.storeUrl" . | quote }}
{{- if eq .Values.store.type "s3" }}
{{- with .Values.store.s3.endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.store.s3.region }}
- name: AWS_DEFAULT_REGION
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{- /* Tenants' quotas as the settings of one component ("gateway" or "operator"): each default a
variable of its own, the tenants' table one JSON object with the settings' snake_case names. */ -}}
{{- define "loraplane.tenantQuotaEnv" -}}
{{- $prefix := printf "LORAPLANE_%s__" (upper .section) }}
{{- range $name, $value := .ctx.Values.tenants.defaults }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ $prefix }}TENANT_DEFAULTS__{{ snakecase $name | upper }}
  value: {{ $value | int64 | quote }}
{{- end }}
{{- end }}
{{- with .ctx.Values.tenants.quotas }}
{{- $table := dict }}
{{- range $tenant, $quota := . }}
{{- $fields := dict }}
{{- range $name, $value := $quota }}
{{- $_ := set $fields (snakecase $name) (ternary nil ($value | int64) (kindIs "invalid" $value)) }}
{{- end }}
{{- $_ := set $table $tenant $fields }}
{{- end }}
- name: {{ $prefix }}TENANT_QUOTAS
  value: {{ toJson $table | quote }}
{{- end }}
{{- end -}}

{{- define "loraplane.storeEnvFrom" -}}
{{- if and (eq .Values.store.type "s3") .Values.store.s3.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ .Values.store.s3.credentialsSecret }}
{{- end }}
{{- end -}}

{{- define "loraplane.storeVolume" -}}
{{- if eq .Values.store.type "pvc" }}
- name: store
  persistentVolumeClaim:
    claimName: {{ include "loraplane.storePvcName" . }}
{{- end }}
{{- end -}}

{{- define "loraplane.storeVolumeMount" -}}
{{- if eq .Values.store.type "pvc" }}
- name: store
  mountPath: {{ .Values.store.pvc.mountPath }}
{{- end }}
{{- end -}}

{{/* Pod-level security: non-root, fixed ids matching the image's user, RuntimeDefault seccomp. */}}
{{- define "loraplane.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "loraplane.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Validations of combinations the schema cannot express; each fails with a readable message. */}}
{{- define "loraplane.validate" -}}
{{- if and .Values.apiKeys.existingSecret .Values.apiKeys.tenants -}}
{{- fail "apiKeys: set either apiKeys.existingSecret or apiKeys.tenants, not both" -}}
{{- end -}}
{{- if and (eq .Values.store.type "s3") (not (hasPrefix "s3://" .Values.store.s3.url)) -}}
{{- fail (printf "store.s3.url must start with s3:// when store.type is s3 (got %q)" .Values.store.s3.url) -}}
{{- end -}}
{{- if and (eq .Values.store.type "pvc") .Values.store.pvc.existingClaim .Values.store.pvc.create -}}
{{- fail "store.pvc: set store.pvc.create=false when store.pvc.existingClaim names a claim" -}}
{{- end -}}
{{- if and (eq .Values.store.type "pvc") (not .Values.store.pvc.existingClaim) (not .Values.store.pvc.create) -}}
{{- fail "store.pvc: set store.pvc.existingClaim or store.pvc.create=true when store.type is pvc" -}}
{{- end -}}
{{- $names := dict -}}
{{- range $i, $rt := .Values.runtimes -}}
{{- if hasKey $names $rt.name -}}
{{- fail (printf "runtimes[%d].name %q is used twice; runtime names must be unique" $i $rt.name) -}}
{{- end -}}
{{- $_ := set $names $rt.name true -}}
{{- $sources := 0 -}}
{{- range $k := list "pvc" "image" "hub" -}}
{{- if hasKey $rt.model $k -}}{{- $sources = add1 $sources -}}{{- end -}}
{{- end -}}
{{- if ne $sources 1 -}}
{{- fail (printf "runtimes[%d] (%s): model needs exactly one of pvc, image or hub (got %d)" $i $rt.name $sources) -}}
{{- end -}}
{{- if and $rt.gpus $rt.resources -}}
{{- if hasKey ($rt.resources.limits | default dict) "nvidia.com/gpu" -}}
{{- fail (printf "runtimes[%d] (%s): set the GPU count with gpus or resources.limits.nvidia.com/gpu, not both" $i $rt.name) -}}
{{- end -}}
{{- end -}}
{{- if and $rt.maxResidentAdapters $rt.maxAdapters -}}
{{- if gt (int $rt.maxResidentAdapters) (int $rt.maxAdapters) -}}
{{- fail (printf "runtimes[%d] (%s): maxResidentAdapters (%d) cannot exceed maxAdapters (%d)" $i $rt.name (int $rt.maxResidentAdapters) (int $rt.maxAdapters)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.gateway.ingress.enabled (not .Values.gateway.ingress.hosts) -}}
{{- fail "gateway.ingress.enabled needs at least one entry in gateway.ingress.hosts" -}}
{{- end -}}
{{- end -}}
