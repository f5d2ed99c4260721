package demo

// Resources is the demo mesh, a template over the application ports. It is
// exported so that a test can apply exactly what the demo applies.
const Resources = `apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: frontend
spec:
  ports:
  - port: 80
    targetPort: {{.HTTP}}
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: backend
spec:
  selector:
    app: backend
  ports:
  - port: 80
    targetPort: {{.HTTP}}
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: backend-v1
spec:
  selector:
    app: backend
    version: v1
  ports:
  - port: 80
    targetPort: {{.HTTP}}
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: backend-v2
spec:
  selector:
    app: backend
    version: v2
  ports:
  - port: 80
    targetPort: {{.HTTP}}
---
apiVersion: verge.dev/v1alpha1
kind: Service
metadata:
  name: greeter
spec:
  ports:
  - port: 9000
    protocol: GRPC
    targetPort: {{.GRPC}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: backend-split
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: backend
    port: 80
  rules:
  - backendRefs:
    - name: backend-v1
      port: 80
      weight: 90
    - name: backend-v2
      port: 80
      weight: 10
`
